"""Pixel shortcuts: what the image border alone, and the central field alone, tell about the label.

Three short trainings with one configuration, on the same split, scored on the same held-out patients:
`full` (the images as they are), `border_only` (the central field blanked: images.blank_center) and
`center_only` (the border blanked: images.blank_border). A border-only model that finds a class as well as the
full one says the full model's figure need not come from the lungs (Maguolo & Nanni 2020; DeGrave et al. 2021).

For a trained run, `gradcam_outside_share` measures where its model looks: the share of Grad-CAM mass outside
the central field (images.central_box) over its test split.
"""
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from ...core.errors import CxrError
from ...data.images import CENTRAL_FIELD, central_box, check_preprocessing
from ...data.labels import classes_of

PROBES = {"full": None, "border_only": "blank-center", "center_only": "blank-border"}
PROBE_DEFAULTS = dict(size=128, epochs=3, bs=32)  # a dataset's probes: small and short (stated in audit.md)
PRETRAINED_PROBE = dict(arch="tf_efficientnet_lite0", pretrained=True, train_bn=False,
                        plan="head:1@1e-2,all:{rest}@1e-4:2e-3")  # the pip-installed ImageNet weights: works offline
SCRATCH_PROBE = dict(arch="resnet18", pretrained=False, lr=2e-3)


def probe_preprocessing(base, probe):
    "The run's preprocessing followed by the probe's blanking step ('standardize' + 'blank-center' ...)."
    step = PROBES[probe]
    return check_preprocessing("+".join(s for s in (base, step) if s and s != "none") or "none")


def default_probe_config(size=None, epochs=None):
    """The probes' training configuration for a dataset: EfficientNet-Lite0 from its pip-installed ImageNet weights
    (a head epoch, then the rest unfrozen) at 128 px for 3 epochs; ResNet18 from scratch where the weights are not
    installed."""
    size, epochs = size or PROBE_DEFAULTS["size"], int(epochs or PROBE_DEFAULTS["epochs"])
    from ...models.weights import ensure_pretrained_available
    try:
        ensure_pretrained_available(PRETRAINED_PROBE["arch"])
        config = dict(PRETRAINED_PROBE)
        config["plan"] = config["plan"].format(rest=max(1, epochs - 1)) if epochs > 1 else "head:1@1e-2"
    except CxrError:  # no offline weights here: a from-scratch probe still finds what the border carries
        config = {**SCRATCH_PROBE, "epochs": epochs}
    return {**config, "size": size, "bs": PROBE_DEFAULTS["bs"]}


RUN_OPTIONS_KEPT = ("arch", "pretrained", "weights", "hidden", "dropout", "opt", "loss", "aug", "resize_method",
                    "preprocessing", "jpeg_quality", "train_bn", "bn_stats", "label_smoothing", "balance_sources",
                    "oversample", "lr")  # train options (training/options.py) a run's probes keep; the rest: short


def run_probe_config(config, size=None, epochs=None):
    "A trained run's configuration made short for the probes: its arch, weights and preprocessing, small and brief."
    out = {k: config[k] for k in RUN_OPTIONS_KEPT if k in config and config[k] is not None}
    if isinstance(out.get("jpeg_quality"), list): out["jpeg_quality"] = tuple(out["jpeg_quality"])
    out["size"] = size or PROBE_DEFAULTS["size"]
    epochs = int(epochs or PROBE_DEFAULTS["epochs"])
    out["epochs"], out["freeze_epochs"] = epochs, 1 if epochs > 1 else 0
    return {**out, "bs": PROBE_DEFAULTS["bs"]}


def scores_of(split_metrics, classes):
    "Per-class AUROC and accuracy of one probe's held-out split."
    per_class = split_metrics.get("per_class") or {}
    return {"auroc": {c: (per_class.get(c) or {}).get("auc") for c in classes},
            "accuracy": split_metrics.get("accuracy", split_metrics.get("accuracy_multi")), "n": split_metrics.get("n")}


def held_out_split(table):
    "test when the table has one, else valid (and the audit says so)."
    return "test" if (table["split"] == "test").any() else "valid"


def pixel_probes(table, config, out_dir, seed=0, quiet=True):
    """Train the three probes (PROBES) with `config` (train()'s keywords) on `table`, each into out_dir/<probe>;
    returns {"full"|"border_only"|"center_only": {"auroc": {class: float}, "accuracy": float, "n": int},
    "split": the held-out split, "config": what was trained}."""
    from ...training.run import train
    split, classes = held_out_split(table), classes_of(table)
    base = config.get("preprocessing", "none")
    results = {"split": split, "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
               "central_field": CENTRAL_FIELD}
    for probe in PROBES:
        options = {**config, "preprocessing": probe_preprocessing(base, probe), "seed": seed, "audit": False,
                   "calibrate": False, "target_sensitivity": None, "save_best": False, "overwrite": True}
        print(f"pixel probe {probe}: training {config.get('arch')} at {config.get('size')} px "
              f"(preprocessing {options['preprocessing']})", flush=True)
        with (contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()):
            metrics = train(table=table, out=str(Path(out_dir) / probe), **options)
        results[probe] = scores_of(metrics.get(split) or {}, classes)
        print(f"pixel probe {probe}: {split} AUROC " + ", ".join(f"{c} {a:.3f}" for c, a in results[probe]["auroc"].items()
                                                                 if a is not None), flush=True)
    return results


def outside_share(cam, field=CENTRAL_FIELD):
    "The share of a heatmap's mass (H, W) outside the central field; NaN for an all-zero map."
    h, w = cam.shape
    left, top, right, bottom = central_box(w, h, field)
    total = float(cam.sum())
    if total <= 0: return float("nan")
    return float((total - cam[top:bottom, left:right].sum()) / total)


def gradcam_outside_share(model_dir, paths, batch_size=16, max_images=None):
    """Where a trained model looks: the mean share of Grad-CAM mass outside the central field over `paths`
    (each image's predicted class), beside the share a uniform map would have (the area outside the field)."""
    import torch

    from ...inference.gradcam import gradcam
    from ...inference.predictor import Predictor
    predictor = Predictor.from_dir(model_dir, device="cpu", precision="fp32")
    paths = list(paths)[:max_images] if max_images else list(paths)
    shares, failed = [], 0
    for start in range(0, len(paths), batch_size):
        loaded = [predictor.load(p) for p in paths[start:start + batch_size]]
        ok = [x for x in loaded if not isinstance(x, str)]
        failed += len(loaded) - len(ok)
        if not ok: continue
        cams = gradcam(predictor.model, predictor.to_input(torch.stack(ok)).float())
        shares += [outside_share(c) for c in cams]
    shares = np.asarray([s for s in shares if np.isfinite(s)])
    box = central_box(1000, 1000)
    uniform = 1 - (box[2] - box[0]) * (box[3] - box[1]) / 1e6
    crop = "crop-field" in str(predictor.preprocessing)
    return {"outside_share": float(shares.mean()) if len(shares) else None, "uniform_share": round(uniform, 3),
            "n": int(len(shares)), "unreadable": failed, "central_field": CENTRAL_FIELD,
            "note": ("the model sees the central field only (crop-field): its whole input is inside the field, so "
                     "this measures the border of that crop" if crop else None)}


def probe_workdir(out):
    "Where the probes' run folders go: DIR/probes, or a temporary folder when the audit has no DIR."
    if out is not None: return Path(out) / "probes", contextlib.nullcontext()
    tmp = tempfile.TemporaryDirectory(prefix="cxr-audit-")
    return Path(tmp.name), tmp

