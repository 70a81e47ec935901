"""`predict`: images, folders, globs or a CSV of paths with a model folder."""
import sys

from ..core.errors import CxrError
from ..inference.predictor import format_predictions, parse_threshold, predict
from ..models.folder import card_path
from ..training.options import OPTIONS  # --tta, --precision and --bf16 as train takes them
from ..core.args import as_bool, as_int
from ..data.images import MAX_PIXELS, set_max_pixels


def predict_command(model_dir, *inputs, out=None, gradcam=None, tta=None, threshold=None, batch_size=32,
                    submission=None, unsafe_pickle=False, precision="auto", engine="torch", int8=False,
                    channels_last=None, device=None, workers=None, bf16=None, max_pixels=MAX_PIXELS):
    """Predict images, folders (recursive), globs, or a CSV with a `path` column.

    Writes path, pred, p_<class>..., error, warning (the input guard's: another modality, body part or view,
    colour, an odd shape, a blank image; still predicted) to --out (or prints a table); the model card's path goes
    to stderr. --tta true averages the logits of the plain image and 5 mild zoom/shift views (no flips; default:
    as the model was evaluated, model.json's `tta`); --threshold T (or 'class=t,...') overrides model.json's
    thresholds; --submission FILE writes id,label (multi-label: id + 0/1 per class); --gradcam DIR writes
    heatmap overlays; --precision auto|fp32|bf16|fp16 (auto: fp32 on a CPU, the model's exact outputs on any machine;
    fp16 on CUDA; --bf16 is its deprecated alias), --channels-last true|false (default: with the precision);
    --engine onnx runs model.onnx with onnxruntime (exported on first use, or into ~/.cache/cxr_fast/onnx when the
    model dir is read-only; --int8: the model.int8.onnx `cxr_fast export --int8` wrote,
    faster; its probabilities differ from fp32's, by how much `export --int8` prints); --unsafe-pickle allows loading a
    fastai export.pkl (a pickle runs code: only for files you trust); --max-pixels N: larger images (width x height,
    read from the header) are an error row, never decoded (default 50 megapixels, as serve's). Exit status 1 if any
    image failed."""
    if not inputs: raise CxrError("give at least one INPUT: image files, folders, globs or a CSV with a path column")
    set_max_pixels(as_int(max_pixels, "max-pixels", 1))
    maybe_bool = lambda value, name: None if value is None else as_bool(value, name)  # noqa: E731  None: the default
    df = predict(model_dir, [str(i) for i in inputs], out=out, gradcam=gradcam,
                 tta=None if tta is None else OPTIONS["tta"].coerce(tta),  # None: as model.json says
                 threshold=parse_threshold(threshold), batch_size=as_int(batch_size, "batch-size", 1),
                 submission=submission, unsafe_pickle=as_bool(unsafe_pickle, "unsafe-pickle"),
                 precision=OPTIONS["precision"].coerce(precision), engine=str(engine), int8=as_bool(int8, "int8"),
                 bf16=OPTIONS["bf16"].coerce(bf16), channels_last=maybe_bool(channels_last, "channels-last"), device=device,
                 workers=None if workers is None else as_int(workers, "workers", 0))
    prec = df.attrs["precision"]
    print(f"{df.attrs['engine']} engine, precision {prec['name']} ({prec['reason']})", file=sys.stderr)
    n_bad = int((df["error"] != "").sum())
    if out is None: print(format_predictions(df))
    else: print(f"wrote {len(df)} predictions to {out}")
    if submission is not None: print(f"wrote submission to {submission}")
    flagged = df.loc[df["warning"] != ""]
    if len(flagged):
        print(f"{len(flagged)} of {len(df)} image(s) do not look like frontal chest X-rays (predicted anyway; see the "
              f"warning column), e.g. {flagged['path'].iloc[0]}: {flagged['warning'].iloc[0]}", file=sys.stderr)
    card = card_path(model_dir)
    if card is not None: print(f"model card (intended use, training data, limitations): {card}", file=sys.stderr)
    if n_bad and out is not None:  # one line; the list is the CSV's error rows
        print(f"{n_bad} of {len(df)} image(s) could not be read: their rows in {out} say why (error column), e.g. "
              f"{df.loc[df['error'] != '', 'error'].iloc[0]}", file=sys.stderr)
    elif n_bad:
        print(f"{n_bad} of {len(df)} image(s) could not be read:", file=sys.stderr)
        for e in df.loc[df["error"] != "", "error"]: print(f"  {e}", file=sys.stderr)
    return 1 if n_bad else 0
