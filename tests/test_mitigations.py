"""Training past shortcuts: border suppression, the JPEG compression path, source balance, and that predict does
what training did (model.json)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_fast import load_model
from cxr_fast.data.blocks import JpegRecompress, get_dls
from cxr_fast.cli import main
from cxr_fast.core.errors import DataError
from cxr_fast.data.images import (blank_border, blank_center, central_box, check_preprocessing, crop_field,
                                  jpeg_range, preprocess, standardize)
from cxr_fast.data.sources.phantom import _anatomy, draw_phantom
from cxr_fast.data.table import build_table
from cxr_fast.training.imbalance import sampling_weights
from cxr_fast.training.run import train

MARK = 6  # a white square in the top-left corner: outside the central field of a 48 px image (its border is 7 px)


def test_central_field_is_one_box_used_by_every_step():
    img = Image.fromarray(np.full((100, 200), 200, np.uint8))
    assert central_box(200, 100) == (30, 15, 170, 85)
    assert crop_field(img).size == (140, 70)
    border_blank = np.asarray(blank_border(img))
    assert border_blank[15:85, 30:170].min() == 200 and border_blank[:15].max() == 0 and border_blank[:, :30].max() == 0
    center_blank = np.asarray(blank_center(img))
    assert center_blank[15:85, 30:170].max() == 0 and center_blank[:15].min() == 200


def test_preprocessing_pipeline_runs_steps_in_order_and_names_an_unknown_step():
    img = Image.fromarray(np.linspace(50, 150, 64 * 64).reshape(64, 64).astype(np.uint8))
    out = np.asarray(preprocess(img, "standardize+crop-field"))
    assert np.array_equal(out, np.asarray(crop_field(standardize(img))))  # stretched over the whole image, then cropped
    assert out.shape == (44, 44) and not np.array_equal(out, np.asarray(standardize(crop_field(img))))
    assert check_preprocessing("none") == "none" and check_preprocessing(" equalize + blank-border ") == "equalize+blank-border"
    with pytest.raises(DataError, match="unknown preprocessing 'sharpen'"):
        check_preprocessing("standardize+sharpen")


def test_jpeg_quality_option_and_transform():
    assert jpeg_range("30:95") == (30, 95) and jpeg_range("none") is None and jpeg_range(None) is None
    with pytest.raises(DataError, match="jpeg-quality"):
        jpeg_range("0:100")
    tfm = JpegRecompress((20, 90))
    tfm.before_call(None, split_idx=1)
    assert tfm.quality == 55  # valid, test and predict: the middle of the range
    seen = set()
    for _ in range(30):
        tfm.before_call(None, split_idx=0)
        seen.add(tfm.quality)
    assert min(seen) >= 20 and max(seen) <= 90 and len(seen) > 5  # training: random in the range


def test_source_balance_weighs_each_source_the_same_within_a_class():
    table = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(10)], "patient_id": list("abcdefghij"),
                          "split": ["train"] * 10, "label": ["A"] * 8 + ["B"] * 2,
                          "source": ["s1"] * 6 + ["s2"] * 2 + ["s2"] * 2})
    w = sampling_weights(table, by_class=False, by_source=True)
    a1, a2 = w[:6].sum(), w[6:8].sum()
    assert np.isclose(a1, a2) and np.isclose(a1 + a2, 8)  # class A keeps its weight, shared evenly by its sources
    assert np.allclose(w[8:], 1.0)
    both = sampling_weights(table, by_class=True, by_source=True)
    assert np.isclose(both[:8].sum(), both[8:].sum())  # and each class weighs the same
    assert sampling_weights(table, by_class=False, by_source=False) is None


def test_predict_applies_training_preprocessing_and_jpeg_path(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=3, image_size=48, valid_pct=0.3, dedup="off")
    options = dict(preprocessing="standardize+crop-field", jpeg_quality="40:80")
    train(table=table, out=tmp_path / "run", pretrained=False, epochs=1, size=32, bs=8, num_workers=0, aug="none",
          seed=1, audit=False, calibrate=False, **options)
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["preprocessing"] == "standardize+crop-field" and meta["jpeg_quality"] == [40, 80]
    model = load_model(tmp_path / "run")
    valid = table[table["split"] == "valid"].reset_index(drop=True)
    dls = get_dls(table, size=32, bs=8, num_workers=0, aug="none", preprocessing=options["preprocessing"],
                  jpeg_quality=(40, 80))
    x_train_path = torch.cat([b[0] for b in dls.test_dl(valid, with_labels=True)])
    x_predict = model.to_input(torch.stack([model.load(p) for p in valid["path"]]))
    assert (x_train_path - x_predict).abs().max() < 1e-5  # the same pixels through both paths


def planted_marker_set(root, n_patients=14, size=48, seed=0):
    """Binary phantoms (Normal / Pneumonia) with a white corner square on Pneumonia in train and valid, and on Normal
    in test (the marker moved to the other class): a shortcut that holds in training and lies in test."""
    rng = np.random.default_rng(seed)
    for split, n, marked in (("train", n_patients, "Pneumonia"), ("valid", n_patients // 2, "Pneumonia"),
                             ("test", n_patients // 2, "Normal")):
        for cls in ("Normal", "Pneumonia"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                anatomy = _anatomy(rng)
                for k in range(2):
                    img = draw_phantom(cls, anatomy, size, rng)
                    if cls == marked: img[1:1 + MARK, 1:1 + MARK] = 255
                    Image.fromarray(img).save(folder / f"{split}{cls}{i:03d}_{k}.png")
    return root


def marker_run(root, out, preprocessing):
    "Train the way a user does (the CLI), then predict the test folder with the model: (valid, test) accuracy."
    argv = ["train", "folders", str(root), "--task", "folders", "--out", str(out), "--arch", "tf_efficientnet_lite0",
            "--plan", "head:2@1e-2,all:3@1e-3", "--train-bn", "false", "--size", "48", "--bs", "16", "--aug", "none",
            "--num-workers", "0", "--audit", "false", "--calibrate", "false", "--target-sensitivity", "none",
            "--preprocessing", preprocessing]
    assert main(argv) == 0
    table = pd.read_csv(out / "table.csv")
    model = load_model(out)
    accuracy = {}
    for split in ("valid", "test"):
        rows = table[table["split"] == split]
        accuracy[split] = float((model.predict(rows["path"].tolist())["pred"].to_numpy() == rows["label"].to_numpy()).mean())
    return accuracy


@pytest.mark.slow  # two trainings of EfficientNet-Lite0 (its pip-installed weights): about two CPU minutes
def test_border_suppression_trains_past_a_planted_marker(tmp_path):
    root = planted_marker_set(tmp_path / "marked")
    plain = marker_run(root, tmp_path / "plain", "none")
    cropped = marker_run(root, tmp_path / "crop", "crop-field")
    # the plain model follows the marker to the wrong class in test; the cropped one never sees it and keeps its accuracy
    assert plain["test"] <= 0.6 and plain["valid"] - plain["test"] >= 0.2, plain
    assert cropped["test"] - plain["test"] >= 0.15 and cropped["test"] >= cropped["valid"] - 0.15, (cropped, plain)


def test_mitigation_options_from_the_command_line(tmp_path, capsys):
    """train with the options as a user types them, then predict with the model: model.json records them and
    predict applies them; a wrong value is one line and exit status 2."""
    from cxr_fast.data.sources.phantom import make_phantoms
    root = tmp_path / "ph"
    make_phantoms(root, patients_per_class=3, size=40)
    run = tmp_path / "run"
    common = ["train", "phantom", str(root), "--task", "3class", "--out", str(run), "--arch", "resnet18",
              "--pretrained", "false", "--epochs", "1", "--size", "32", "--bs", "8", "--num-workers", "0",
              "--audit", "false"]
    for bad, message in ((["--jpeg-quality", "0:100"], "--jpeg-quality 0:100"),
                         (["--preprocessing", "standardize+sharpen"], "unknown preprocessing 'sharpen'")):
        assert main(common + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (run / "model").exists()  # nothing written for a rejected option
    assert main(common + ["--preprocessing", "standardize+crop-field", "--jpeg-quality", "40:80",
                          "--balance-sources", "true"]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["preprocessing"] == "standardize+crop-field" and meta["jpeg_quality"] == [40, 80]
    assert meta["training"]["balance_sources"] is True
    assert "JPEG (quality 40-80" in (run / "model" / "MODEL_CARD.md").read_text()
    images = sorted(str(p) for p in root.rglob("*.png"))[:4]
    assert main(["predict", str(run / "model"), *images, "--out", str(tmp_path / "p.csv")]) == 0
    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 4 and preds["pred"].isin(meta["classes"]).all()
