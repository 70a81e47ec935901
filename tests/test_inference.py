"""predict: exact training preprocessing, bad files as error rows, the safe model format, inputs and decisions."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import cxr_fast
from conftest import save_16bit_png, save_corrupt_jpeg, save_gray, save_rgba_png
from cxr_fast.data.blocks import get_dls
from cxr_fast.cli import main
from cxr_fast.core.errors import CxrError, ModelFormatError
from cxr_fast.inference.inputs import collect_inputs
from cxr_fast.inference.predictor import BF16_TOLERANCE, Predictor
from cxr_fast.inference.views import TTA_VIEWS, tta_views
from cxr_fast.models.registry import build_model, default_head
from cxr_fast.models.folder import save_model_dir
from cxr_fast.data.table import build_table

SIZE, BS = 32, 8
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_model_dir(table, out, thresholds=None, learn=False, resize_method="squish"):
    "An untrained resnet18 saved as a model dir with full meta; returns (dir, model, dls)."
    torch.manual_seed(0)
    dls = get_dls(table, size=SIZE, bs=BS, num_workers=0, aug="none", resize_method=resize_method)
    classes = list(dls.vocab)
    model = build_model("resnet18", len(classes), default_head()).eval()
    meta = {"arch": "resnet18", "head": default_head(), "n_out": len(classes), "classes": classes,
            "task": table.attrs["task"], "multilabel": table.attrs["multilabel"], "loss": "ce", "img_size": SIZE,
            "resize_method": resize_method, "normalize": IMAGENET, "thresholds": thresholds or {}, "data": {},
            "metrics": {}}
    learner = None
    if learn:
        from fastai.learner import Learner
        from fastai.losses import CrossEntropyLossFlat
        learner = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    save_model_dir(model, out, meta, learn=learner)
    return out, model, dls


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("inf")
    table = build_table("phantom", root / "ph", "3class", patients_per_class=3, image_size=48, valid_pct=0.4, dedup="off")
    return make_model_dir(table, root / "model", learn=True)


def probs_of(df, classes):
    return df[[f"p_{c}" for c in classes]].to_numpy()


def test_round_trip_gives_the_models_own_probabilities_on_the_valid_batches(three_class):
    mdir, model, dls = three_class
    pred = cxr_fast.load_model(mdir)
    assert isinstance(pred, Predictor) and pred.classes == list(dls.vocab)
    paths = dls.valid.items["path"].tolist()
    x_ref = torch.cat([b[0] for b in dls.valid]).as_subclass(torch.Tensor)
    x_ours = pred.to_input(torch.stack([pred.load(p) for p in paths]))
    assert (x_ours - x_ref).abs().max().item() == 0.0  # the training valid-time transforms, exactly
    with torch.no_grad(): ref = torch.cat([torch.softmax(model(x_ref[i:i + BS]), 1) for i in range(0, len(x_ref), BS)])
    df = cxr_fast.predict(mdir, paths, batch_size=BS, precision="fp32")  # auto may take bf16
    assert list(df.columns) == ["path", "pred", *[f"p_{c}" for c in pred.classes], "error", "warning"]
    np.testing.assert_allclose(probs_of(df, pred.classes), ref.numpy(), atol=1e-6, rtol=0)
    assert (df["error"] == "").all() and df["pred"].tolist() == [pred.classes[i] for i in ref.argmax(1).tolist()]
    # the test_dl path of fastai gives the same inputs too
    x_test = torch.cat([b[0] for b in dls.test_dl(paths)]).as_subclass(torch.Tensor)
    assert (x_test - x_ours).abs().max().item() == 0.0


@pytest.mark.parametrize("method", ["pad", "crop"])
def test_pad_and_crop_resize_match_training(tmp_path, method):
    table = build_table("phantom", tmp_path / "ph", "binary", patients_per_class=2, image_size=40, valid_pct=0.5, dedup="off")
    table.loc[0, "path"] = str(save_gray(tmp_path / "wide.png", size=48).resolve())  # not square: pad/crop matter
    from PIL import Image
    Image.open(table.loc[0, "path"]).resize((60, 40)).save(table.loc[0, "path"])
    table.loc[0, "split"] = "valid"
    mdir, _, dls = make_model_dir(table, tmp_path / "m", resize_method=method)
    pred = cxr_fast.load_model(mdir)
    paths = dls.valid.items["path"].tolist()
    x_ref = torch.cat([b[0] for b in dls.valid]).as_subclass(torch.Tensor)
    assert (pred.to_input(torch.stack([pred.load(p) for p in paths])) - x_ref).abs().max().item() == 0.0


def test_bad_files_become_error_rows_and_exit_code_1(three_class, tmp_path, capsys):
    mdir = three_class[0]
    folder = tmp_path / "in"
    save_gray(folder / "ok.png", seed=1)
    save_gray(folder / "sub" / "ok2.jpeg", seed=2)
    save_16bit_png(folder / "deep.png")
    save_rgba_png(folder / "rgba.png")
    save_corrupt_jpeg(folder / "cut.jpeg")
    (folder / "fake.png").write_text("this is a text file, not a PNG")
    (folder / "notes.txt").write_text("a note")  # in a folder: skipped; named directly: an error row
    (folder / ".hidden.png").write_text("macOS junk")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(mdir), str(folder), str(folder / "notes.txt"), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "skipped 1 non-image file" in captured.err and "3 of 7 image(s) could not be read" in captured.err
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 7 and not df["path"].str.contains("hidden").any()
    err = dict(zip(df["path"].map(lambda p: p.rsplit("/", 1)[-1]), df["error"]))
    assert "cut.jpeg: cannot decode image" in err["cut.jpeg"]
    assert "fake.png: cannot decode image" in err["fake.png"]
    assert "notes.txt: unsupported image type '.txt'" in err["notes.txt"]
    good = df[df["error"] == ""]
    assert sorted(good["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["deep.png", "ok.png", "ok2.jpeg", "rgba.png"]
    probs = good[[c for c in df.columns if c.startswith("p_")]].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (df.loc[df["error"] != "", "pred"] == "").all()
    # all readable: exit 0, and without --out a readable table is printed
    assert main(["predict", str(mdir), str(folder / "ok.png"), str(folder / "rgba.png")]) == 0
    printed = capsys.readouterr().out
    assert "p_Normal" in printed and "rgba.png" in printed and " error" not in printed.splitlines()[0]


def test_pickle_only_model_dir_needs_the_flag(three_class, tmp_path, capsys):
    mdir, model, _ = three_class
    pkl_dir = tmp_path / "pkl"
    pkl_dir.mkdir()
    shutil.copy(mdir / "export.pkl", pkl_dir / "export.pkl")
    image = save_gray(tmp_path / "x.png", seed=3)
    assert main(["predict", str(pkl_dir), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "export.pkl" in err and "runs code" in err and "--unsafe-pickle" in err
    with pytest.raises(ModelFormatError, match="unsafe_pickle=True"):
        cxr_fast.load_model(pkl_dir)
    with pytest.warns(UserWarning, match="runs code"):
        pred = cxr_fast.load_model(pkl_dir, unsafe_pickle=True)
    assert pred.classes == cxr_fast.load_model(mdir).classes and pred.img_size == SIZE
    np.testing.assert_allclose(probs_of(pred.predict([image]), pred.classes),
                               probs_of(cxr_fast.load_model(mdir).predict([image]), pred.classes), atol=1e-6)
    with pytest.warns(UserWarning, match="runs code"):
        assert main(["predict", str(pkl_dir), str(image), "--unsafe-pickle"]) == 0


def test_wrong_format_version_is_one_clear_line(three_class, tmp_path, capsys):
    bad = tmp_path / "old"
    shutil.copytree(three_class[0], bad)
    meta = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    image = save_gray(tmp_path / "x.png")
    assert main(["predict", str(bad), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model format version 99" in err and "reads version 1" in err
    assert main(["predict", str(tmp_path / "nothing"), str(image)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_csv_and_glob_inputs_and_run_dir(three_class, tmp_path):
    mdir = three_class[0]
    for i in range(3): save_gray(tmp_path / "imgs" / f"a{i}.png", seed=i)
    pd.DataFrame({"path": ["imgs/a0.png", "imgs/a2.png"], "other": [1, 2]}).to_csv(tmp_path / "list.csv", index=False)
    df = cxr_fast.predict(mdir, tmp_path / "list.csv")
    assert df["path"].tolist() == [str(tmp_path / "imgs" / "a0.png"), str(tmp_path / "imgs" / "a2.png")]
    assert (df["error"] == "").all()
    paths, _ = collect_inputs([str(tmp_path / "imgs" / "a*.png")])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a0.png", "a1.png", "a2.png"]
    run_dir = tmp_path / "run"
    shutil.copytree(mdir, run_dir / "model")  # a run folder works too
    assert len(cxr_fast.predict(run_dir, str(tmp_path / "imgs" / "*.png"))) == 3
    with pytest.raises(CxrError, match="no files match"):
        collect_inputs([str(tmp_path / "nope*.png")])
    pd.DataFrame({"file": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CxrError, match="needs a 'path' column"):
        cxr_fast.predict(mdir, tmp_path / "bad.csv")


def test_multilabel_thresholds_override_and_submission(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "multilabel", patients_per_class=2, image_size=40, valid_pct=0.5, dedup="off")
    thresholds = {"COVID-19": 0.0, "Pneumonia": 1.0, "Normal": 0.5}  # always, never, by probability
    mdir, model, dls = make_model_dir(table, tmp_path / "m", thresholds=thresholds)
    paths = dls.valid.items["path"].tolist()
    df = cxr_fast.predict(mdir, paths, submission=tmp_path / "sub.csv")
    probs = probs_of(df, ["COVID-19", "Pneumonia", "Normal"])
    assert ((probs > 0) & (probs < 1)).all()  # sigmoid per label, not softmax
    assert not np.allclose(probs.sum(1), 1)
    want = ["COVID-19" + (";Normal" if p >= 0.5 else "") for p in probs[:, 2]]
    assert df["pred"].tolist() == want
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["id", "COVID-19", "Pneumonia", "Normal"]
    assert sub["COVID-19"].eq(1).all() and sub["Pneumonia"].eq(0).all()
    assert sub["id"].tolist() == [p.rsplit("/", 1)[-1][:-4] for p in paths]
    out = tmp_path / "p.csv"
    assert main(["predict", str(mdir), *paths[:2], "--threshold", "0", "--out", str(out)]) == 0
    assert (pd.read_csv(out)["pred"] == "COVID-19;Pneumonia;Normal").all()
    assert main(["predict", str(mdir), paths[0], "--threshold", "Pneumonia=0,Normal=1", "--out", str(out)]) == 0
    assert pd.read_csv(out)["pred"].tolist() == ["COVID-19;Pneumonia"]


def test_binary_positive_threshold_submission_tta_bf16_gradcam(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "binary", patients_per_class=2, image_size=40, valid_pct=0.5, dedup="off")
    mdir, model, dls = make_model_dir(table, tmp_path / "m", thresholds={"positive": 0.0})
    paths = dls.valid.items["path"].tolist()
    pred = cxr_fast.load_model(mdir)
    df = pred.predict(paths)
    assert (df["pred"] == pred.classes[1]).all()  # threshold 0 on the positive (second) class
    assert (pred.predict(paths, threshold=1.0)["pred"] == pred.classes[0]).all()
    plain = probs_of(df, pred.classes)
    tta = probs_of(pred.predict(paths, tta=True), pred.classes)
    assert len(TTA_VIEWS) == 6 and not np.array_equal(tta, plain) and np.abs(tta - plain).max() < 0.2
    assert [v.shape for v in tta_views(torch.zeros(2, 3, SIZE, SIZE))] == [(2, 3, SIZE, SIZE)] * 6
    fast = Predictor.from_dir(mdir, bf16=True, channels_last=True)
    assert np.abs(probs_of(fast.predict(paths), pred.classes) - plain).max() < BF16_TOLERANCE
    with pytest.raises(CxrError, match="threshold"):
        cxr_fast.load_model(three_class_free_dir(tmp_path)).predict(paths[:1], threshold=0.3)
    cams = tmp_path / "cams"
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(mdir), *paths, "--gradcam", str(cams), "--submission", str(sub), "--workers", "0"]) == 0
    assert sorted(p.name for p in cams.glob("*.png")) == sorted(p.rsplit("/", 1)[-1] for p in paths)
    from PIL import Image
    assert Image.open(next(cams.glob("*.png"))).mode == "RGB"
    s = pd.read_csv(sub)
    assert list(s.columns) == ["id", "label"] and (s["label"] == pred.classes[1]).all()


def three_class_free_dir(tmp_path):
    "A 3-class model dir (argmax: a --threshold does not apply)."
    table = build_table("phantom", tmp_path / "ph3", "3class", patients_per_class=2, image_size=40, valid_pct=0.5, dedup="off")
    return make_model_dir(table, tmp_path / "m3")[0]


@pytest.mark.realdata
def test_real_dicom_jpeg_png_match_fastai_test_dl(three_class, shared_data, tmp_path):
    mdir, _, dls = three_class
    dcm = shared_data / "dicom" / "nih_chestxray14_no_finding.dcm"
    dark = shared_data / "darkcovidnet"
    covid = sorted((dark / "Covid-19").iterdir())
    real = [str(dcm), *[str(p) for p in covid if p.suffix.lower() in (".jpeg", ".jpg")][:2],
            *[str(p) for p in covid if p.suffix.lower() == ".png"][:2], str(sorted((dark / "No_findings").iterdir())[0])]
    pred = cxr_fast.load_model(mdir)
    df = pred.predict(real, batch_size=4)
    assert (df["error"] == "").all(), df["error"].tolist()
    x_ref = torch.cat([b[0] for b in dls.test_dl(real, bs=4)]).as_subclass(torch.Tensor)
    assert (pred.to_input(torch.stack([pred.load(p) for p in real])) - x_ref).abs().max().item() == 0.0
