"""`export`: a model folder to ONNX."""
from ..inference.export import export_onnx
from ..inference.onnx_file import DEFAULT_OPSET
from ..core.args import as_bool, as_int


def export_command(model_dir, out=None, int8=False, calibrate=None, calibration_images=128, opset=DEFAULT_OPSET):
    """Export a model dir to ONNX (model.onnx, with model.json's description inside) for predict --engine onnx.

    python -m cxr_fast export MODEL_DIR [--out DIR] [--int8 --calibrate IMAGES [--calibration-images 128]]

    --out: where model.onnx goes (default: the model dir; another folder also gets a copy of model.json);
    --int8: also write model.int8.onnx, statically quantised with ranges from --calibrate (files, folders,
    globs or a CSV with a path column; up to --calibration-images of them, evenly spaced)."""
    calib = calibrate if calibrate is None or isinstance(calibrate, (list, tuple)) else [str(calibrate)]
    r = export_onnx(model_dir, out=out, int8=as_bool(int8, "int8"), calibrate=calib,
                    calibration_images=calibration_images, opset=as_int(opset, "opset", 7))
    print(f"wrote {r['onnx']} ({r['exporter']} exporter; max |logit - torch| {r['max_abs_logit_diff']:.2g})")
    if "int8" in r:
        print(f"wrote {r['int8']} (calibrated on {r['calibration_images']} images; against fp32 on them: argmax "
              f"agreement {r['int8_argmax_agreement']:.3f}, max |prob diff| {r['int8_max_abs_prob_diff']:.3f})")
    return 0
