"""Inference engines past the torch fp32 forward pass: an exported ONNX model run by onnxruntime.

    module, meta = load_onnx(MODEL_DIR)               # model.onnx (fp32, graph optimisations on)
    module, meta = load_onnx(MODEL_DIR, int8=True)    # model.int8.onnx (static int8, see export.py)
    Predictor(module, meta).predict(paths)            # the same preprocessing, decisions and output

An ONNX file is a protobuf: loading it runs no pickled code. The model's description (model.json: classes,
image size, resize method, preprocessing, normalisation, thresholds) travels inside it as metadata
(`cxr_fast_model_json`), so the file alone predicts like its model dir; when the model dir's model.pth is
beside it, the weights' SHA-256 recorded at export and the description must match (a stale export is
refused, not used).
"""
import json
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CxrError, ModelFormatError
from ..core.machine import default_threads
from ..models.folder import file_sha256

ENGINES = ("torch", "onnx")
ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
META_KEY, WEIGHTS_KEY = "cxr_fast_model_json", "cxr_fast_weights_sha256"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# what predict needs to match its model dir exactly (weights are checked by their SHA-256)
CHECKED_KEYS = ("arch", "classes", "n_out", "multilabel", "img_size", "resize_method", "preprocessing", "jpeg_quality",
                "normalize",
                "thresholds", "calibration")


def require_onnxruntime():
    "onnxruntime, or a CxrError saying how to install it."
    try:
        import onnxruntime  # the `onnx` extra: only the onnx engine and export need it
    except ImportError:
        raise CxrError('the onnx engine needs onnxruntime: pip install "cxr_fast[onnx]" '
                       "(onnx, onnxruntime, onnxscript)") from None
    return onnxruntime


def onnx_path(model_dir, int8=False):
    "The ONNX file of a model dir (or run dir, or the .onnx file itself)."
    path = Path(model_dir).expanduser()
    if path.suffix == ".onnx": return path
    for folder in (path, path / "model"):
        if (folder / ONNX_NAME).is_file() or (folder / "model.json").is_file():
            return folder / (INT8_NAME if int8 else ONNX_NAME)
    return path / (INT8_NAME if int8 else ONNX_NAME)


def read_onnx_meta(path):
    "(model description, weights sha256) stored in an ONNX file's metadata by export.py."
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _meta_of(session, path)


def _meta_of(session, path):
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ModelFormatError(f"{path}: not exported by cxr_fast (no {META_KEY} metadata); export it with "
                               f"`python -m cxr_fast export MODEL_DIR`")
    try:
        meta = json.loads(props[META_KEY])
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: unreadable {META_KEY} metadata ({e})") from None
    return meta, props.get(WEIGHTS_KEY)


def session_options(threads=None):
    "onnxruntime options: every graph optimisation (constant folding, conv+BN+activation fusion), `threads` intra-op."
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = default_threads() if threads is None else int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


class OnnxModule:
    """An onnxruntime session standing in for the torch module a Predictor calls: a float batch (N, 3, H, W)
    in, a logits tensor out. CPU (or CUDA when onnxruntime has it and device='cuda')."""

    def __init__(self, path, threads=None, device="cpu"):
        ort = require_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        x = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])

    def to(self, *args, **kwargs):
        "A no-op (the session's device is chosen when it is made): the torch-module API a Predictor uses."
        return self

    def eval(self):
        return self


def check_fresh(path, weights_sha, model_dir, meta):
    """Refuse an ONNX file exported from other weights (model.pth's SHA-256) or another description
    (model.json's classes, preprocessing, thresholds...) than the model dir it sits in."""
    weights, beside = Path(model_dir) / "model.pth", Path(model_dir) / "model.json"
    again = f"export again: python -m cxr_fast export {model_dir}"
    if weights.is_file() and weights_sha and file_sha256(weights) != weights_sha:
        raise ModelFormatError(f"{path} was exported from other weights than {weights}; {again}")
    if not beside.is_file(): return
    saved = json.loads(beside.read_text())
    for key in CHECKED_KEYS:
        if saved.get(key) != meta.get(key):
            raise ModelFormatError(f"{path}: its {key} ({meta.get(key)!r}) differs from {beside}'s ({saved.get(key)!r}); {again}")


def load_onnx(model_dir, int8=False, threads=None, device="cpu"):
    """(OnnxModule, meta) for a model dir's exported ONNX file (fp32, or int8 with `int8`), meta from the file.

    Fails with what to run when the file is missing, not a cxr_fast export, or stale (other weights)."""
    path = onnx_path(model_dir, int8)
    if not path.is_file():
        how = " --int8 --calibrate IMAGES" if int8 else ""
        raise ModelFormatError(f"no {path.name} in {path.parent}; export it first: "
                               f"python -m cxr_fast export {path.parent}{how}")
    module = OnnxModule(path, threads, device)
    meta, weights_sha = _meta_of(module.session, path)
    check_fresh(path, weights_sha, path.parent, meta)
    return module, {**meta, "engine": "onnx-int8" if int8 else "onnx"}
