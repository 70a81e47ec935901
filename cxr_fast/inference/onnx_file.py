"""A model dir's model.onnx (fp32): written by `export` and, on first use, by `predict --engine onnx`.

    path = ensure_onnx(MODEL_DIR)   # MODEL_DIR/model.onnx when fresh; else exported now, said in one line

`ensure_onnx` (Predictor.from_onnx calls it) exports model.onnx on first use, and again when the file is stale
(exported from other weights or another model.json: engines.check_fresh), atomically (a temporary folder beside
it, checked against torch, then renamed); a read-only model dir (a Kaggle input) gets its export in the cache
folder instead ($CXR_FAST_ONNX_CACHE, else ~/.cache/cxr_fast/onnx; one sub-folder per weights + model.json).
int8 needs calibration images, so model.int8.onnx comes only from `export --int8 --calibrate IMAGES` (export.py,
which imports this module; this one imports no Predictor, so inference.py may use it).
"""
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .engines import (INPUT_NAME, META_KEY, ONNX_NAME, OUTPUT_NAME, WEIGHTS_KEY, OnnxModule, check_fresh, onnx_path,
                      read_onnx_meta, require_onnxruntime)
from ..core.errors import CxrError
from ..models.folder import file_sha256, find_model_dir, load_model_module
from ..core.jsonio import write_atomic

DEFAULT_OPSET = 18
EXPORT_TOLERANCE = 1e-3  # max |logit difference| ONNX fp32 vs torch fp32 on the check batch


def _hw(img_size):
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def _torch_export(model, x, path, opset):
    "torch.onnx.export with a dynamic batch axis: the dynamo exporter, else the TorchScript one."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True,
                              opset_version=opset, external_data=False, verbose=False)
        return "dynamo"
    except Exception as first:  # an architecture torch.export cannot trace: the TorchScript exporter
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}}, dynamo=False, opset_version=17)
            return "torchscript"
        except Exception as second:
            raise CxrError(f"ONNX export failed: dynamo exporter: {type(first).__name__}: {first}; "
                           f"TorchScript exporter: {type(second).__name__}: {second}") from None


def _with_metadata(src, dest, props):
    "Copy an ONNX file, adding string metadata (metadata_props); weights stay inline."
    import onnx  # the `onnx` extra: loaded only by an export
    proto = onnx.load(str(src))
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    write_atomic(dest, lambda p: onnx.save(proto, str(p)))


def _run(path, x):
    return OnnxModule(path)(x).numpy()


def export_fp32(folder, out_dir, opset=DEFAULT_OPSET):
    """Export a model dir to OUT_DIR/model.onnx (fp32, model.json's description and the weights' SHA-256 inside;
    model.json copied beside it when OUT_DIR is another folder), checked against torch on a random batch.
    Returns (model, meta, metadata props, result dict: model_dir, out, exporter, onnx, max_abs_logit_diff)."""
    model, meta = load_model_module(folder, device="cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = _hw(meta["img_size"])
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    props = {META_KEY: json.dumps(meta, default=str), WEIGHTS_KEY: file_sha256(folder / "model.pth"),
             "cxr_fast_version": str(meta.get("cxr_fast_version", ""))}
    result = {"model_dir": str(folder), "out": str(out_dir)}
    with tempfile.TemporaryDirectory(prefix="cxr_onnx_") as tmp:
        raw = Path(tmp) / "raw.onnx"
        result["exporter"] = _torch_export(model, x, raw, opset)
        _with_metadata(raw, out_dir / ONNX_NAME, props)
    if out_dir.resolve() != folder.resolve():
        shutil.copyfile(folder / "model.json", out_dir / "model.json")  # the description travels with it
    check = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(): ref = model(check).numpy()
    diff = float(np.abs(_run(out_dir / ONNX_NAME, torch.from_numpy(check.numpy())) - ref).max())
    if diff > EXPORT_TOLERANCE:
        raise CxrError(f"the exported ONNX model differs from torch by {diff:.2g} in the logits (over {EXPORT_TOLERANCE}); "
                       f"not usable")
    result.update(onnx=str(out_dir / ONNX_NAME), max_abs_logit_diff=diff)
    return model, meta, props, result


def require_export():
    "onnxruntime, onnx and onnxscript (the `onnx` extra), or a one-line CxrError saying how to install them."
    require_onnxruntime()
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise CxrError(f"exporting for the onnx engine needs {' and '.join(missing)}: pip install \"cxr_fast[onnx]\"")


def onnx_cache_dir():
    "Where exports of read-only model dirs go: $CXR_FAST_ONNX_CACHE, else ~/.cache/cxr_fast/onnx."
    return Path(os.environ.get("CXR_FAST_ONNX_CACHE") or Path.home() / ".cache" / "cxr_fast" / "onnx").expanduser()


def _cache_key(folder):
    "A model dir's weights and description, as a folder name: another model (or a retrained one) gets its own."
    h = hashlib.sha256(file_sha256(folder / "model.pth").encode())
    h.update((folder / "model.json").read_bytes())
    return h.hexdigest()[:16]


def is_fresh(path, folder):
    "True when `path` is a cxr_fast export of `folder`'s model.pth and model.json (engines.check_fresh)."
    if not Path(path).is_file(): return False
    try:
        meta, weights_sha = read_onnx_meta(path)
        check_fresh(path, weights_sha, folder, meta)
    except Exception:  # stale (ModelFormatError), or not an ONNX file onnxruntime can read: export again
        return False
    return bool(weights_sha)


def writable(folder):
    "Whether a file can be created in `folder` (a Kaggle input is a read-only mount)."
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cxr_write_"):
            return True
    except OSError:
        return False


def _export_into(folder, dest):
    "Export `folder` to `dest` (model.onnx) atomically: into a temporary folder beside it, checked, then renamed."
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".cxr_onnx_"))
    try:
        export_fp32(folder, tmp)
        if dest.parent.resolve() != folder.resolve(): os.replace(tmp / "model.json", dest.parent / "model.json")
        os.replace(tmp / ONNX_NAME, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_onnx(model_dir, int8=False, log=None):
    """The path `load_onnx` should open for a model dir: its model.onnx when fresh; else exported now, into the model
    dir (first use, or a stale file: other weights or model.json), or where that is read-only into onnx_cache_dir().
    Says what it did in one line (`log`, default stderr). int8 files, a .onnx path and a folder without model.pth
    (nothing to export from) are left to load_onnx, which says what to do."""
    path = onnx_path(model_dir, int8)
    if int8 or Path(model_dir).suffix == ".onnx": return path
    folder = find_model_dir(model_dir)
    if not (folder / "model.pth").is_file(): return path
    require_onnxruntime()
    say = log or (lambda line: print(line, file=sys.stderr))
    local = folder / ONNX_NAME
    if is_fresh(local, folder): return local
    why = f"{local} is stale (other weights or model.json)" if local.is_file() else f"no {ONNX_NAME} in {folder}"
    if writable(folder):
        require_export()
        say(f"onnx engine: {why}; exporting it now (once, reused after): {local}")
        return _export_into(folder, local)
    cached = onnx_cache_dir() / _cache_key(folder) / ONNX_NAME
    if is_fresh(cached, folder): return cached
    require_export()
    say(f"onnx engine: {why}, and {folder} is read-only; exporting to the cache (reused after): {cached}")
    return _export_into(folder, cached)
