"""The shortcut audit as a user calls it: `python -m cxr_fast audit` on a dataset and on a run, `cxr_fast.audit(...)`,
and the verdict that `train` puts in report.md, the model card and the serve page."""
import json

import numpy as np
import pytest
from PIL import Image

import cxr_fast
from cxr_fast.cli import main
from cxr_fast.data.sources.phantom import _anatomy, draw_phantom


def phantom_folders(root, planted=True, n_patients=10, size=48, seed=0):
    """Two classes of phantoms, two images per patient. planted: Pneumonia saved as RGB JPEG of another shape,
    Normal as square grayscale PNG (DarkCovidNet's shortcut); else both square grayscale PNG."""
    rng = np.random.default_rng(seed)
    for cls in ("Normal", "Pneumonia"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_patients):
            anatomy = _anatomy(rng)
            for k in range(2):
                img = Image.fromarray(draw_phantom(cls, anatomy, size, rng))
                if planted and cls == "Pneumonia":
                    img.convert("RGB").resize((size + 8 + i % 5, size)).save(root / cls / f"{cls}{i:03d}_{k}.jpg")
                else:
                    img.save(root / cls / f"{cls}{i:03d}_{k}.png")
    return root


def read_audit(out):
    return json.loads((out / "audit.json").read_text()), (out / "audit.md").read_text()


def test_audit_command_flags_a_planted_file_format(tmp_path, capsys):
    root = phantom_folders(tmp_path / "planted")
    before = {p: p.read_bytes() for p in root.rglob("*.*")}
    assert main(["audit", "folders", str(root), "--task", "folders", "--out", str(tmp_path / "a"), "--probes", "false"]) == 0
    result, md = read_audit(tmp_path / "a")
    assert result["file_facts"]["auroc"]["Pneumonia"] >= 0.95
    assert result["verdict"]["level"] == "shortcut" and "Pneumonia is predictable from file facts" in result["verdict"]["text"]
    assert "Verdict (shortcut)" in md and "pixel probes not run" in md
    assert "--preprocessing crop-field --resize-method crop" in result["verdict"]["advice"]  # the measured best first
    assert result["verdict"]["advice"].count("--preprocessing crop-field") == 1
    assert result["verdict"]["advice"] in md
    printed = capsys.readouterr().out
    assert "verdict (shortcut)" in printed and "To train past it" in printed
    assert before == {p: p.read_bytes() for p in root.rglob("*.*")}  # the data is never modified


def test_audit_does_not_flag_a_set_without_a_planted_fact(tmp_path):
    root = phantom_folders(tmp_path / "clean", planted=False)
    result = cxr_fast.audit("folders", str(root), "folders", out=tmp_path / "a", probes=False)
    assert result["verdict"]["level"] == "none", result["verdict"]
    assert "No shortcut found" in result["verdict"]["text"]
    assert result["verdict"]["advice"] is None


def test_audit_of_one_class_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "one"
    phantom_folders(root, planted=False)
    for f in (root / "Pneumonia").iterdir(): f.unlink()
    (root / "Pneumonia").rmdir()
    assert main(["audit", "folders", str(root), "--task", "folders", "--out", str(tmp_path / "a"), "--probes", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least two classes" in err[0]


def test_pixel_probes_and_run_audit_with_gradcam(tmp_path):
    root = phantom_folders(tmp_path / "planted", n_patients=8, size=40)
    result = cxr_fast.audit("folders", str(root), "folders", out=tmp_path / "a", probe_size=32, probe_epochs=1)
    for probe in ("full", "border_only", "center_only"):
        assert set(result["pixel"][probe]["auroc"]) == {"Normal", "Pneumonia"}
        assert 0 <= result["pixel"][probe]["accuracy"] <= 1
    assert result["pixel"]["split"] == "test"
    assert "border only" in (tmp_path / "a" / "audit.md").read_text()
    # a trained run: its own figures, probes on its configuration, and where its model looks
    run = tmp_path / "run"
    assert main(["train", "folders", str(root), "--task", "folders", "--out", str(run), "--arch", "resnet18",
                 "--pretrained", "false", "--epochs", "1", "--size", "32", "--bs", "8", "--num-workers", "0",
                 "--test-pct", "0.25"]) == 0
    assert main(["audit", str(run), "--probe-size", "32", "--probe-epochs", "1"]) == 0
    audited, md = read_audit(run / "audit")
    assert audited["run"]["split"] == "test" and set(audited["run"]["auroc"]) == {"Normal", "Pneumonia"}
    assert 0 <= audited["gradcam"]["outside_share"] <= 1 and audited["gradcam"]["n"] > 0
    assert "Where the model looks" in md


def test_train_puts_the_verdict_in_report_card_and_serve_page(tmp_path, capsys):
    root = phantom_folders(tmp_path / "planted", n_patients=8, size=40)
    run = tmp_path / "run"
    assert main(["train", "folders", str(root), "--task", "folders", "--out", str(run), "--arch", "resnet18",
                 "--pretrained", "false", "--epochs", "1", "--size", "32", "--bs", "8", "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "shortcut audit (shortcut)" in printed and "To train past it" in printed
    assert "## Shortcut audit" in (run / "report.md").read_text() and "To train past it" in (run / "report.md").read_text()
    assert "Pneumonia is predictable from file facts" in (run / "model" / "MODEL_CARD.md").read_text()
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["audit"]["level"] == "shortcut" and meta["audit"]["file_facts_auroc"]["Pneumonia"] >= 0.95
    from cxr_fast.apps.serve.card import model_card_html
    page = model_card_html("m", meta, run / "model")
    assert "Shortcut audit" in page and "Pneumonia is predictable" in page


@pytest.mark.realdata
def test_audit_of_darkcovidnet_file_facts_flag_covid(shared_data, tmp_path):
    root = shared_data / "darkcovidnet"
    if not root.is_dir(): pytest.skip("../shared/data/darkcovidnet is absent")
    result = cxr_fast.audit("folders", str(root), "folders", out=tmp_path / "a", probes=False)
    assert result["file_facts"]["acquisition"]["auroc"]["Covid-19"] >= 0.95
    assert result["verdict"]["level"] == "shortcut" and "Covid-19" in result["verdict"]["text"]


def test_the_run_probes_keep_only_train_options():
    from cxr_fast.apps.audit.probes import RUN_OPTIONS_KEPT
    from cxr_fast.training.options import OPTIONS
    assert set(RUN_OPTIONS_KEPT) <= set(OPTIONS), set(RUN_OPTIONS_KEPT) - set(OPTIONS)


def test_an_audit_of_two_images_of_a_class_says_too_few_to_tell_and_does_not_warn(tmp_path, capsys):
    root = phantom_folders(tmp_path / "few", planted=False, n_patients=10)
    rng = np.random.default_rng(5)
    for k in range(2):  # two Pneumonia images, stored as the planted shortcut would store them
        img = Image.fromarray(draw_phantom("Pneumonia", _anatomy(rng), 48, rng)).convert("RGB").resize((57, 48))
        img.save(root / "Pneumonia" / f"extra{k}.jpg")
    for f in (root / "Pneumonia").glob("*.png"): f.unlink()
    assert main(["audit", "folders", str(root), "--task", "folders", "--out", str(tmp_path / "a"), "--probes", "false"]) == 0
    result, md = read_audit(tmp_path / "a")
    assert "Pneumonia" in result["file_facts"]["too_few"]
    assert result["verdict"]["level"] == "none" and "too few images to tell" in result["verdict"]["text"]
    assert "too few images to tell" in md and "predictable from file facts" not in md


def test_file_fact_aurocs_carry_their_interval_and_the_verdict_names_it(tmp_path):
    root = phantom_folders(tmp_path / "planted")
    result = cxr_fast.audit("folders", str(root), "folders", out=tmp_path / "a", probes=False)
    low, high = result["file_facts"]["acquisition"]["ci"]["Pneumonia"]
    assert low <= result["file_facts"]["acquisition"]["auroc"]["Pneumonia"] <= high and low >= 0.9
    assert f"[{low:.2f}, {high:.2f}]" in result["verdict"]["text"]
