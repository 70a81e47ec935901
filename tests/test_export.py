"""ONNX export of a model dir and the onnxruntime engine: same outputs as torch, metadata inside the file,
stale exports refused, int8 calibrated on images. Tiny resnet18 at 32 px."""
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import save_gray  # noqa: E402
from cxr_fast.inference.engines import INT8_NAME, META_KEY, ONNX_NAME, OnnxModule, load_onnx, read_onnx_meta
from cxr_fast.core.errors import CxrError, ModelFormatError
from cxr_fast.cli.export import export_command
from cxr_fast.inference.export import export_onnx
from cxr_fast.inference.predictor import Predictor
from cxr_fast.models.registry import build_model, default_head
from cxr_fast.models.folder import save_model_dir

SIZE = 32
CLASSES = ["COVID-19", "Normal", "Pneumonia"]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    "An untrained resnet18 model dir (32 px, 3 classes) with model.onnx and model.int8.onnx exported."
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_model("resnet18", 3, default_head()).eval()
    meta = {"arch": "resnet18", "head": default_head(), "n_out": 3, "classes": CLASSES, "task": "3class",
            "multilabel": False, "loss": "ce", "img_size": SIZE, "resize_method": "squish", "preprocessing": "none",
            "normalize": IMAGENET, "thresholds": {}, "data": {}, "metrics": {}}
    mdir = save_model_dir(model, root / "model", meta)
    images = root / "images"
    for i in range(12): save_gray(images / f"im{i}.png", seed=i, size=48, bright_spot=i % 2 == 0)
    result = export_onnx(mdir, int8=True, calibrate=[str(images)], calibration_images=8)
    return mdir, images, result


def test_export_writes_model_onnx_with_the_model_description(model_dir):
    mdir, _, result = model_dir
    assert (mdir / ONNX_NAME).is_file() and (mdir / INT8_NAME).is_file()
    assert result["max_abs_logit_diff"] < 1e-3 and result["calibration_images"] == 8
    meta, sha = read_onnx_meta(mdir / ONNX_NAME)
    saved = json.loads((mdir / "model.json").read_text())
    assert meta == saved and len(sha) == 64
    import onnx
    props = {p.key for p in onnx.load(str(mdir / INT8_NAME)).metadata_props}
    assert {META_KEY, "cxr_fast_int8"} <= props


def test_onnx_engine_predicts_as_torch(model_dir):
    "End to end through the Predictor: the same decisions, probabilities within float noise, any batch size."
    mdir, images, _ = model_dir
    paths = sorted(str(p) for p in images.glob("*.png")) + [str(images / "missing.png")]
    torch_df = Predictor.from_dir(mdir, device="cpu", precision="fp32").predict(paths, batch_size=5)
    module, meta = load_onnx(mdir)
    assert meta["engine"] == "onnx" and meta["classes"] == CLASSES
    onnx_df = Predictor(module, meta, device="cpu").predict(paths, batch_size=5)
    cols = [f"p_{c}" for c in CLASSES]
    assert (onnx_df["error"] != "").sum() == 1 and onnx_df["error"].tolist() == torch_df["error"].tolist()
    ok = onnx_df["error"] == ""
    assert np.abs(onnx_df.loc[ok, cols].to_numpy() - torch_df.loc[ok, cols].to_numpy()).max() < 1e-4
    assert onnx_df["pred"].tolist() == torch_df["pred"].tolist()
    tta = Predictor(module, meta, device="cpu").predict(paths[:3], tta=True)  # TTA views go through the session too
    assert np.isfinite(tta[cols].to_numpy()).all()


def test_int8_engine_runs_and_stays_close(model_dir):
    mdir, images, result = model_dir
    module, meta = load_onnx(mdir, int8=True)
    assert meta["engine"] == "onnx-int8"
    df = Predictor(module, meta, device="cpu").predict([str(images)])
    probs = df[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert 0 <= result["int8_max_abs_prob_diff"] < 0.5 and 0 <= result["int8_argmax_agreement"] <= 1


def test_onnx_module_accepts_channels_last_and_bf16_inputs(model_dir):
    mdir = model_dir[0]
    module = OnnxModule(mdir / ONNX_NAME)
    x = torch.randn(2, 3, SIZE, SIZE)
    a = module(x)
    b = module(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == (2, 3) and torch.allclose(a, b)


def test_stale_export_is_refused(model_dir, tmp_path):
    "New weights or another description than at export: load_onnx says to export again."
    mdir = model_dir[0]
    copy = tmp_path / "model"
    shutil.copytree(mdir, copy)
    state = torch.load(copy / "model.pth", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 1
    torch.save(state, copy / "model.pth")
    with pytest.raises(ModelFormatError, match="other weights.*export again"): load_onnx(copy)
    shutil.copyfile(mdir / "model.pth", copy / "model.pth")
    meta = json.loads((copy / "model.json").read_text())
    meta["classes"] = ["a", "b", "c"]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="classes.*export again"): load_onnx(copy)


def test_onnx_file_alone_carries_the_metadata(model_dir, tmp_path):
    "Without the model dir beside it, the .onnx file predicts with its own stored description."
    mdir, images, _ = model_dir
    shutil.copyfile(mdir / ONNX_NAME, tmp_path / "alone.onnx")
    module, meta = load_onnx(tmp_path / "alone.onnx")
    df = Predictor(module, meta, device="cpu").predict([str(images / "im0.png")])
    assert df["pred"].iloc[0] in CLASSES


def test_missing_export_and_int8_without_images_fail_with_what_to_do(model_dir, tmp_path):
    mdir = model_dir[0]
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.pth"): shutil.copyfile(mdir / name, bare / name)
    with pytest.raises(ModelFormatError, match="python -m cxr_fast export"): load_onnx(bare)
    with pytest.raises(ModelFormatError, match="--int8 --calibrate"): load_onnx(bare, int8=True)
    with pytest.raises(CxrError, match="--calibrate"): export_onnx(bare, int8=True)


def test_export_command_to_another_folder(model_dir, tmp_path, capsys):
    mdir = model_dir[0]
    assert export_command(str(mdir), out=str(tmp_path / "onnx")) == 0
    assert (tmp_path / "onnx" / ONNX_NAME).is_file() and (tmp_path / "onnx" / "model.json").is_file()
    assert "wrote" in capsys.readouterr().out
    module, meta = load_onnx(tmp_path / "onnx")  # model.json copied beside it, no weights: description checked
    assert meta["classes"] == CLASSES


def test_predict_engine_onnx_from_the_command_line(model_dir, tmp_path, capsys):
    from cxr_fast.cli import main
    mdir, images, _ = model_dir
    for extra in ([], ["--int8"]):
        out = tmp_path / f"preds{len(extra)}.csv"
        assert main(["predict", str(mdir), str(images), "--engine", "onnx", *extra, "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert ("onnx-int8 engine" if extra else "onnx engine") in err
        import pandas as pd
        assert len(pd.read_csv(out)) == 12


def test_engine_option_errors(model_dir, tmp_path):
    mdir, images, _ = model_dir
    with pytest.raises(CxrError, match="onnx engine takes fp32"):
        Predictor.from_dir(mdir, engine="onnx", precision="bf16")
    with pytest.raises(CxrError, match="--int8 runs on the onnx engine"): Predictor.from_dir(mdir, int8=True)
    with pytest.raises(CxrError, match="unknown engine"): Predictor.from_dir(mdir, engine="tensorrt")
    onnx = Predictor.from_dir(mdir, engine="onnx")
    assert onnx.precision.name == "fp32" and not onnx.channels_last and "onnxruntime" in onnx.precision.reason
    with pytest.raises(CxrError, match="--gradcam needs the torch engine"):
        onnx.predict([str(images / "im0.png")], gradcam=tmp_path / "cams")
