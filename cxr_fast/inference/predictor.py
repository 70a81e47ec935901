"""Predict images with a saved model: batched, decoding in parallel with the model, no Learner per image.

    model = cxr_fast.load_model("runs/r18/model")        # a Predictor (safe: no pickle is run)
    df = model.predict(["a.png", "scans/", "test/*.jpeg"])  # path, pred, p_<class>..., error, warning
    df = cxr_fast.predict("runs/r18/model", "test/", tta=True, out="preds.csv")

Inputs (files, folders, globs, CSVs) are expanded by inputs.py; decoding is decoding.py, TTA views views.py.
Preprocessing is the training pipeline's valid-time path, reproduced exactly: `images.load_image`
(any format -> 8-bit grayscale), fastai `Resize(img_size, method)` with its valid-time behaviour
(squish: a bilinear resize; crop: centre crop; pad: reflection padding), grayscale replicated to 3
channels, /255, and the model's `normalize` statistics. The resize is done on the grayscale plane
(bilinear on identical channels gives identical channels), so decoding costs a third of the RGB path.

Decoding runs in a thread pool (Pillow releases the GIL while decoding and resizing) that stays
`prefetch` batches ahead of the model, so decoding overlaps the forward pass; threads rather than
DataLoader worker processes, so it works the same in notebooks and on any OS, with no pickling.
The forward pass runs under `torch.inference_mode()` at `precision` (precision.py: `auto` is fp32 on any CPU,
the model's exact outputs whatever the machine, and fp16 on CUDA; `bf16` asks for bfloat16 autocast, faster on
a CPU with native bf16) with the NHWC memory layout (channels-last); bf16 probabilities stay within
BF16_TOLERANCE of fp32 (measured by bench/bench_inference.py), but the argmax moves on near-ties.
`engine="onnx"` runs the model.onnx (or with `int8`, model.int8.onnx) that export.py wrote, with
onnxruntime (engines.py): the same preprocessing, decisions and output.

TTA (`tta=True`) averages the logits of the plain image and 5 mild views made from the model-size input (a
1.1x centre zoom-in and four 1.05x zoom-ins shifted 2.5% towards each corner, see views.TTA_VIEWS), then applies the
temperature and softmax/sigmoid: the same as `train --tta true` evaluates with, so such a model's thresholds
and temperature hold for its TTA probabilities. No flips: a chest X-ray has a side. The cost is 6 forward
passes per image. `tta=None` (the default) uses TTA when model.json says the model was evaluated with it.

Probabilities are temperature-scaled when model.json has a fitted temperature (`calibration`, see
calibration.py): logits / T, which changes no argmax and no ranking. `predict` adds a `warning` column:
what the input guard (guards.py) says about files that do not look like frontal chest radiographs
(another modality or body part, a lateral view, colour, an extreme shape, an almost blank image);
those files are still predicted.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.args import as_float
from ..core.errors import CxrError, DataError, ModelFormatError
from ..core.activations import activate
from .decoding import ImageDecoder
from .gradcam import gradcam, overlay
from .inputs import collect_inputs, unique_stems
from .views import mean_over_views, tta_views
from ..core.machine import set_threads
from ..models.folder import PICKLE_NAME, load_model_module, locate_model_dir
from ..training.precision import autocast as precision_autocast
from ..training.precision import resolve_precision
from ..data.resize import RESIZE_METHODS
from ..data.labels import positive_index
from ..core.jsonio import write_atomic

DEFAULT_MULTILABEL_THRESHOLD = 0.5
# max abs probability difference, bf16 autocast + channels-last vs fp32: `make bench` measured 0.071 on 299 real
# DarkCovidNet images (resnet18 fine-tuned 1 epoch; argmax agreement 99.3%, changes only on near-ties), 0.0003 on phantoms
BF16_TOLERANCE = 0.08


# ---- the predictor ------------------------------------------------------------------------

def _default_device(device):
    if device is None: return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def meta_from_learner(learn):
    "A model.json-like description of a fastai Learner (for a model loaded from export.pkl)."
    from fastai.data.transforms import Normalize  # fastai only here: an export.pkl is a fastai Learner
    y_tfms = [type(t).__name__ for t in learn.dls.tls[1].tfms.fs] if hasattr(learn.dls, "tls") else []
    multilabel = any("MultiCategorize" in n for n in y_tfms)
    resize = next((t for t in learn.dls.after_item.fs if hasattr(t, "size") and hasattr(t, "method")), None)  # a Resize
    norm = next((t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)), None)
    if resize is None: raise ModelFormatError(f"{PICKLE_NAME}: its DataLoaders have no Resize transform; cannot tell the input size")
    method = resize.method if resize.method in RESIZE_METHODS else "squish"
    w, h = resize.size
    mean, std = ((norm.mean.flatten().tolist(), norm.std.flatten().tolist()) if norm is not None
                 else ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    classes = [str(c) for c in learn.dls.vocab]
    return {"arch": type(learn.model).__name__, "classes": classes, "n_out": len(classes), "multilabel": multilabel,
            "task": "export.pkl", "img_size": h if h == w else [h, w], "resize_method": method,
            "normalize": {"mean": mean, "std": std}, "thresholds": {}}


class Predictor:
    "A loaded model plus its preprocessing: `.predict(paths) -> DataFrame` (see the module docstring)."

    def __init__(self, model, meta, device=None, precision=None, channels_last=None, source=None, bf16=None):
        """precision: auto/fp32/bf16/fp16 or a precision.Precision (auto: fp32 on a CPU, fp16 on CUDA; channels-last
        with it unless `channels_last` says otherwise); None: auto, or what precision.default_precision set; bf16:
        deprecated alias."""
        self.device = _default_device(device)
        self.meta, self.source = meta, source
        self.classes = [str(c) for c in meta["classes"]]
        self.multilabel = bool(meta["multilabel"])
        self.thresholds = dict(meta.get("thresholds") or {})
        self.img_size = meta["img_size"]
        self.decoder = ImageDecoder(meta)  # file -> uint8 model-size pixels, as training's valid-time path
        self.preprocessing = self.decoder.preprocessing
        norm = meta["normalize"]
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.precision = (precision if hasattr(precision, "channels_last") else
                          resolve_precision(precision, bf16=bf16, device=self.device, purpose="predict"))
        self.channels_last = self.precision.channels_last if channels_last is None else bool(channels_last)
        self.bf16 = self.precision.name == "bf16"
        self.temperature = temperature_tensor(meta, self.classes, self.device)  # None: probabilities as they come
        self.tta = bool(meta.get("tta", False))  # the default: TTA when the model was evaluated with it
        self.model = model.to(self.device).eval()
        if self.channels_last: self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_dir(cls, model_dir, device=None, unsafe_pickle=False, engine="torch", int8=False, **kwargs):
        """Load a model dir (or a run dir holding model/). Weights load with weights_only=True; a dir with
        only fastai's export.pkl loads only with `unsafe_pickle=True` (unpickling runs code from the file).

        engine: torch, or onnx (onnxruntime on the model.onnx `cxr_fast export` wrote; `int8`: model.int8.onnx)."""
        device = _default_device(device)
        if engine == "onnx": return cls.from_onnx(model_dir, device, int8, **kwargs)
        if engine != "torch": raise CxrError(f"unknown engine {engine!r}; choose one of: torch, onnx")
        if int8: raise CxrError("--int8 runs on the onnx engine: export with `python -m cxr_fast export MODEL_DIR --int8 "
                                "--calibrate IMAGES`, then predict --engine onnx --int8")
        folder, kind = locate_model_dir(model_dir)
        if kind == "safe":
            model, meta = load_model_module(folder, device="cpu")  # map_location cpu: GPU-trained models load anywhere
            return cls(model, meta, device=device, source=str(folder), **kwargs)
        if not unsafe_pickle:
            raise ModelFormatError(f"{folder} holds only fastai's {PICKLE_NAME} (no model.json/model.pth); loading a pickle "
                                   f"runs code stored in it, so it is off by default; pass --unsafe-pickle "
                                   f"(Python: unsafe_pickle=True) only if you trust the file")
        from fastai.learner import load_learner
        warnings.warn(f"loading {folder / PICKLE_NAME} with pickle (--unsafe-pickle): this runs code stored in the file",
                      stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = load_learner(folder / PICKLE_NAME, cpu=True)
        return cls(learn.model, meta_from_learner(learn), device=device, source=str(folder / PICKLE_NAME), **kwargs)

    @classmethod
    def from_onnx(cls, model_dir, device=None, int8=False, precision=None, channels_last=None, bf16=None, **kwargs):
        "A Predictor running the model dir's exported ONNX file with onnxruntime (engines.py); fp32 inputs, NCHW."
        from dataclasses import replace

        from .engines import load_onnx
        from .onnx_file import ensure_onnx
        name = "auto" if precision is None else getattr(precision, "requested", precision)
        if bf16 or str(name).strip().lower() not in ("auto", "fp32"):
            raise CxrError(f"the onnx engine takes fp32 inputs (and runs int8 with --int8); drop --precision {name}")
        module, meta = load_onnx(ensure_onnx(model_dir, int8), int8=int8, device=device)
        p = resolve_precision("fp32", device="cpu", purpose="predict")
        p = replace(p, requested=str(name), channels_last=False,
                    reason=f"onnxruntime {'int8 (static QDQ)' if int8 else 'fp32'}, graph optimisations on")
        return cls(module, meta, device="cpu", precision=p, channels_last=False, source=str(module.path), **kwargs)

    # -- preprocessing
    def load(self, path):
        "Decode + resize one file: a uint8 tensor (1, H, W), or the error message (str) saying why not."
        return self.decoder.decode(path, warn=False)[0]

    def to_input(self, x):
        "A uint8 batch (N, 1 or 3, H, W) -> the normalised float batch the model takes, on the device."
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- the model
    def activation(self, logits):
        "Sigmoid per label (multi-label) or softmax over classes, of logits / T when the model has a temperature."
        logits = logits.float()
        if self.temperature is not None: logits = logits / self.temperature
        return activate(logits, self.multilabel)

    def forward_proba(self, x, tta=None):
        "Probabilities (N, C) for a normalised batch; with `tta` (None: the model's default), of the views' mean logits."
        tta = self.use_tta(tta)
        with torch.inference_mode(), precision_autocast(self.precision):
            views = tta_views(x) if tta else [x]  # one forward pass per view: memory stays at one batch's
            if self.channels_last: views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = torch.cat([self.model(v) for v in views])
            return self.activation(mean_over_views(out, len(x)) if tta else out).cpu()

    def use_tta(self, tta):
        "Whether to run TTA: as asked, or (None) as model.json says the model was evaluated."
        return self.tta if tta is None else bool(tta)

    def predict_proba(self, paths, batch_size=32, tta=None, workers=None, gradcam=None, warnings_out=None):
        """(probs, errors): probs (N, C) float32 with NaN rows for failed files; errors[i] '' or why file i failed.

        tta: average the TTA views' logits (None: as model.json says; see the module docstring).
        gradcam: a folder to write one heatmap overlay PNG per image into; warnings_out: a list that gets the input
        guard's warnings of each file ('' when none)."""
        paths = [str(p) for p in paths]
        probs = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        errors = [""] * len(paths)
        if warnings_out is not None: warnings_out[:] = [""] * len(paths)
        cam_names = unique_stems(paths) if gradcam is not None else None
        for batch in self.decoder.batches(paths, batch_size, workers, warn=warnings_out is not None):
            good = [(i, t) for i, t, _ in batch if not isinstance(t, str)]
            for i, t, w in batch:
                if isinstance(t, str): errors[i] = t
                if warnings_out is not None: warnings_out[i] = w
            if not good: continue
            idx = [i for i, _ in good]
            x_u8 = torch.stack([t for _, t in good])
            probs[idx] = self.forward_proba(self.to_input(x_u8), tta=tta).numpy()
            if gradcam is not None: self.write_gradcams(x_u8, [cam_names[i] for i in idx], gradcam)
        return probs, errors

    def gradcam_batches(self, rows, batch_size=32):
        "Grad-CAM inputs of a table's rows: (normalised batch, grayscale images as the model saw them) per batch."
        for batch in self.decoder.batches(rows["path"].astype(str).tolist(), batch_size, workers=0):
            failed = [t for _, t, _ in batch if isinstance(t, str)]
            if failed: raise DataError(failed[0])
            x_u8 = torch.stack([t for _, t, _ in batch])
            yield self.to_input(x_u8), [Image.fromarray(t[0].numpy(), mode="L") for t in x_u8]

    def predict_image(self, gray, tta=None):
        """One image already decoded to 8-bit grayscale (an upload): (the uint8 input the model saw (1, H, W),
        probabilities (C,), the decision), as `predict` gives them for a file."""
        x_u8 = self.decoder.prepare(gray)
        probs = self.forward_proba(self.to_input(x_u8[None]), tta=tta).numpy()[0]
        return x_u8, probs, self.decide(probs[None])[0]

    def heatmaps(self, x_u8, target=None):
        "Grad-CAM heatmaps (N, H, W) of a uint8 batch: for the predicted class, or `target` (a class index per image)."
        if not isinstance(self.model, torch.nn.Module): raise CxrError("--gradcam needs the torch engine (--engine torch)")
        with torch.enable_grad():
            return gradcam(self.model, self.to_input(x_u8), target=target)

    def write_gradcams(self, x_u8, names, folder):
        "Grad-CAM overlays (PNG) of a uint8 batch, for the predicted class, named `names` in `folder`."
        folder = Path(folder)
        heat = self.heatmaps(x_u8)
        for name, img, h in zip(names, x_u8, heat):
            pil = Image.fromarray(img[0].numpy(), mode="L")
            write_atomic(folder / f"{name}.png", lambda p, im=overlay(pil, h): im.save(p, format="png"))

    # -- decisions
    def thresholds_for(self, threshold=None):
        """Per-class thresholds (multi-label), the positive-class threshold (binary) or None (argmax).

        threshold: a float for every label / the positive class, or {class: t}; overrides model.json."""
        if self.multilabel:
            t = {c: float(self.thresholds.get(c, DEFAULT_MULTILABEL_THRESHOLD)) for c in self.classes}
            if isinstance(threshold, dict):
                unknown = [k for k in threshold if k not in t]
                if unknown: raise CxrError(f"--threshold names {unknown}, not among the classes {self.classes}")
                t.update({k: float(v) for k, v in threshold.items()})
            elif threshold is not None:
                t = {c: float(threshold) for c in self.classes}
            return t
        if threshold is None: return self.thresholds.get("positive") if len(self.classes) == 2 else None
        positive = self.classes[positive_index(self.classes)]
        if len(self.classes) != 2:
            raise CxrError(f"--threshold applies to binary and multi-label models; this one picks one of "
                           f"{len(self.classes)} classes by the highest probability")
        if isinstance(threshold, dict):
            if set(threshold) - {"positive", positive}:
                raise CxrError(f"a binary model takes one threshold, on {positive!r}; got {threshold}")
            threshold = next(iter(threshold.values()))
        return float(threshold)

    def decide(self, probs, threshold=None):
        "Predicted class per row (multi-label: ';'-joined labels at or above threshold, 'none' if none; '' for NaN rows)."
        t = self.thresholds_for(threshold)
        preds = []
        for row in probs:
            if np.isnan(row).any(): preds.append("")
            elif self.multilabel: preds.append(";".join(c for c, p in zip(self.classes, row) if p >= t[c]) or "none")
            elif t is not None:  # binary: the disease class (table.positive_index) when its probability >= t
                pos = positive_index(self.classes)
                preds.append(self.classes[pos] if row[pos] >= t else self.classes[1 - pos])
            else: preds.append(self.classes[int(np.argmax(row))])
        return preds

    def predict(self, inputs, batch_size=32, tta=None, threshold=None, workers=None, gradcam=None):
        """A DataFrame: path, pred, p_<class> per class, error ('' when the file was read), warning (the input
        guard's, '' when the file looks like a frontal chest radiograph).

        inputs: image files, folders (recursive), globs or CSVs with a `path` column (see `collect_inputs`)."""
        self.thresholds_for(threshold)  # fail on a bad threshold before the work
        paths, skipped = collect_inputs(inputs)
        if skipped:
            print(f"skipped {len(skipped)} non-image file(s) in the input folders (by file type; no row for them), "
                  f"e.g. {skipped[0]}", file=sys.stderr)
        if not paths: raise CxrError(f"no images found in {inputs}")
        found = []
        probs, errors = self.predict_proba(paths, batch_size, tta, workers, gradcam, warnings_out=found)
        df = pd.DataFrame({"path": paths, "pred": self.decide(probs, threshold)})
        for j, c in enumerate(self.classes): df[f"p_{c}"] = probs[:, j]
        df["error"] = errors
        df["warning"] = found
        df.attrs.update(classes=self.classes, multilabel=self.multilabel, model=self.source,
                        tta=self.use_tta(tta),
                        precision=self.precision.as_dict(), engine=self.meta.get("engine", "torch"))
        return df

    def submission(self, df, threshold=None):
        "Kaggle-style submission of a prediction frame: id (file stem), label; multi-label: id + one 0/1 column per class."
        ok = df[df["error"] == ""]
        ids = [Path(p).stem for p in ok["path"]]
        if not self.multilabel: return pd.DataFrame({"id": ids, "label": ok["pred"].tolist()})
        t = self.thresholds_for(threshold)
        sub = pd.DataFrame({"id": ids})
        for c in self.classes: sub[c] = (ok[f"p_{c}"].to_numpy() >= t[c]).astype(int)
        return sub


def temperature_tensor(meta, classes, device):
    "The fitted temperature of model.json's `calibration` as a tensor dividing logits (1 or (1, C)), or None."
    t = (meta.get("calibration") or {}).get("temperature")
    if t is None: return None
    values = [float(t.get(c, 1.0)) for c in classes] if isinstance(t, dict) else [float(t)]
    if not all(v > 0 for v in values): raise ModelFormatError(f"model.json: calibration temperature {t} must be > 0")
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1)


def load_model(model_dir, device=None, unsafe_pickle=False, **options):
    "A `Predictor` for a model dir (or run dir): `.predict(paths) -> DataFrame`; options: precision, engine, int8, channels_last."
    return Predictor.from_dir(model_dir, device=device, unsafe_pickle=unsafe_pickle, **options)


# ---- the public function and the command --------------------------------------------------

def predict(model_dir, inputs, out=None, gradcam=None, tta=None, threshold=None, batch_size=32, submission=None,
            unsafe_pickle=False, precision=None, engine="torch", int8=False, channels_last=None, device=None,
            workers=None, bf16=None):
    """Predict images, folders (recursive), globs or CSVs of paths with a model dir (or a loaded Predictor).

    Returns the DataFrame (path, pred, p_<class>..., error, warning); `out` and `submission` also write CSVs.
    precision: auto/fp32/bf16/fp16 (precision.py; bf16: deprecated alias); engine: torch or onnx (`int8`);
    tta: test-time augmentation (None: when model.json says the model was evaluated with it)."""
    set_threads()  # torch threads capped at this machine's usable cores
    predictor = model_dir if isinstance(model_dir, Predictor) else Predictor.from_dir(
        model_dir, device=device, unsafe_pickle=unsafe_pickle, precision=precision, engine=engine, int8=int8,
        channels_last=channels_last, bf16=bf16)
    df = predictor.predict(inputs, batch_size=batch_size, tta=tta, threshold=threshold, workers=workers, gradcam=gradcam)
    if out is not None: write_atomic(out, lambda p: df.to_csv(p, index=False))
    if submission is not None:
        sub = predictor.submission(df, threshold)
        if len(sub) < len(df):
            print(f"submission {submission}: {len(df) - len(sub)} unreadable image(s) left out", file=sys.stderr)
        write_atomic(submission, lambda p: sub.to_csv(p, index=False))
    return df


def parse_threshold(value):
    "--threshold: a number in [0, 1], or 'class=t,class=t' / a dict for per-label thresholds."
    if value is None: return None
    if isinstance(value, dict): items = value.items()
    elif isinstance(value, str) and "=" in value: items = [kv.split("=", 1) for kv in value.split(",") if kv.strip()]
    else: return as_float(value, "threshold", 0.0, 1.0)
    return {str(k).strip(): as_float(v, f"threshold {k}", 0.0, 1.0) for k, v in items}


def format_predictions(df):
    "The prediction frame as a readable text table (probabilities to 3 decimals)."
    show = df.copy()
    for c in show.columns:
        if c.startswith("p_"): show[c] = show[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    for col in ("error", "warning"):
        if col in show and (show[col] == "").all(): show = show.drop(columns=col)
    return show.to_string(index=False)
