"""Export a model dir to ONNX for `predict --engine onnx` (onnxruntime), optionally quantised to int8.

    python -m cxr_fast export runs/r18/model                       # -> model.onnx beside model.pth
    python -m cxr_fast export runs/r18/model --int8 --calibrate data/some_images/   # + model.int8.onnx
    python -m cxr_fast predict runs/r18/model scans/ --engine onnx [--int8]

`predict --engine onnx` exports model.onnx itself on first use (or when stale), into the model dir or, when that
is read-only, a cache folder (onnx_file.ensure_onnx); model.int8.onnx needs `export --int8 --calibrate IMAGES`.

The ONNX graph takes the same normalised float batch (N, 3, H, W) as the torch model, any batch size,
and returns logits; the model dir's description (model.json) is stored in the file's metadata, with the
SHA-256 of the weights it came from (engines.py checks both when loading). Export is checked: the ONNX
output must match torch's on a test batch (max |logit difference| printed).

int8: onnxruntime static quantisation of the body (QDQ; per-channel int8 weights, uint8 activations,
ranges at the 99.99th percentile) calibrated on `calibration_images` images given by `--calibrate`
(files, folders, globs or a CSV), preprocessed exactly as predict does; the head (pooling, BatchNorm,
linear layers) stays fp32. The agreement with fp32 on those images is printed; measure it on your own
held-out images too (bench/bench_inference.py does, on real DarkCovidNet images): on a ResNet18 trained one
epoch from scratch (many near-ties) this setting agreed on 97.7% of argmaxes against 95.3% for min-max
ranges with everything quantised (the same 300 images, one comparison).
"""
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.args import as_int
from ..core.activations import activate
from .engines import INPUT_NAME, INT8_NAME, ONNX_NAME, require_onnxruntime
from ..core.errors import CxrError
from .inputs import collect_inputs
from .predictor import Predictor
from ..models.folder import find_model_dir
from .onnx_file import DEFAULT_OPSET, _run, _with_metadata, export_fp32

INT8_OPS = ["Conv", "Add", "MaxPool", "Relu", "Clip"]  # the convolutional body; the head stays fp32


def calibration_batches(model, meta, calibrate, n_images, batch_size=8):
    "Normalised float batches of up to `n_images` readable images from `calibrate`, preprocessed as predict does."
    paths, _ = collect_inputs(calibrate)
    if not paths: raise CxrError(f"no calibration images found in {calibrate}")
    if len(paths) > n_images: paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n_images)]
    pred = Predictor(model, meta, device="cpu")
    loaded = [t for t in (pred.load(p) for p in paths) if not isinstance(t, str)]
    if not loaded: raise CxrError(f"none of the {len(paths)} calibration images could be read")
    x = pred.to_input(torch.stack(loaded))
    return [x[i:i + batch_size].numpy() for i in range(0, len(x), batch_size)]


def quantize_int8(fp32_path, dest, batches):
    "onnxruntime static int8 quantisation of the body (module docstring) calibrated on `batches`; writes `dest`."
    require_onnxruntime()
    # onnxruntime (the `onnx` extra), whose presence require_onnxruntime just checked
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self): self.items = iter({INPUT_NAME: b} for b in batches)
        def get_next(self): return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="cxr_int8_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        logging.disable(logging.WARNING)  # onnxruntime.quantization logs advice through the root logger
        try:
            try:  # shape inference + graph optimisation, as onnxruntime recommends before quantising
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            except Exception:
                shutil.copyfile(fp32_path, pre)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS,
                            calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99})
        finally:
            logging.disable(logging.NOTSET)
        shutil.copyfile(out, dest)
    return dest


def export_onnx(model_dir, out=None, int8=False, calibrate=None, calibration_images=128, opset=DEFAULT_OPSET):
    """Export a model dir (or run dir) to OUT/model.onnx (default OUT: the model dir itself), and with `int8`
    to OUT/model.int8.onnx calibrated on `calibrate`. Returns a dict: paths, exporter, checks."""
    require_onnxruntime()
    if int8 and not calibrate:
        raise CxrError("--int8 needs --calibrate IMAGES: some tens of representative images (files, a folder, "
                       "a glob or a CSV of paths) to set the int8 ranges")
    folder = find_model_dir(model_dir)
    out_dir = Path(out).expanduser() if out else folder
    model, meta, props, result = export_fp32(folder, out_dir, opset)
    if int8:
        batches = calibration_batches(model, meta, calibrate, as_int(calibration_images, "calibration-images", 1))
        with tempfile.TemporaryDirectory(prefix="cxr_int8_") as tmp:
            q = quantize_int8(out_dir / ONNX_NAME, Path(tmp) / "q.onnx", batches)
            n = sum(len(b) for b in batches)
            _with_metadata(q, out_dir / INT8_NAME, {**props, "cxr_fast_int8": json.dumps(
                {"method": "onnxruntime quantize_static QDQ of " + "/".join(INT8_OPS) + " (head fp32), per-channel "
                           "int8 weights, uint8 activations, 99.99th-percentile ranges",
                 "calibration_images": n})})
        xs = np.concatenate(batches)
        p32 = activate(_run(out_dir / ONNX_NAME, torch.from_numpy(xs)), meta["multilabel"])
        p8 = activate(_run(out_dir / INT8_NAME, torch.from_numpy(xs)), meta["multilabel"])
        result.update(int8=str(out_dir / INT8_NAME), calibration_images=n,
                      int8_max_abs_prob_diff=float(np.abs(p32 - p8).max()),
                      int8_argmax_agreement=float((p32.argmax(1) == p8.argmax(1)).mean()))
    return result
