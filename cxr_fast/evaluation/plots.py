"""The evaluation figures, as PNG files: history curves, confusion matrices, ROC curves, image galleries.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas), so no pyplot
state or backend is touched, and written atomically with `table.write_atomic`.
"""
import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Normalize
from PIL import Image
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, roc_curve

from ..data.blocks import test_dl
from ..inference.gradcam import gradcam, overlay
from ..data.images import load_image
from .metrics import auc_or_nan
from ..core.jsonio import write_atomic

DPI = 100


def new_figure(nrows=1, ncols=1, size=(5, 4), **kwargs):
    "A (Figure, axes array) pair that draws off screen."
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig, path):
    "Write `fig` as a PNG atomically; returns the path."
    fig.tight_layout()
    return write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=DPI))


# ---- history --------------------------------------------------------------------------------

def read_history(path):
    """fastai CSVLogger history (several stages appended, maybe with repeated headers) as numbers, one
    row per epoch in order; None when the file is absent or empty."""
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    if df.empty or "epoch" not in df.columns: return None
    df = df[df["epoch"].astype(str) != "epoch"].reset_index(drop=True)  # headers written again by appending stages
    stage = df["stage"].astype(str) if "stage" in df.columns else pd.Series("fit", index=df.index)
    if "trains" in df.columns: stage = stage + " (" + df["trains"].astype(str) + ")"  # training.py: what the stage trained
    if "member" in df.columns: stage = "member " + df["member"].astype(str) + ": " + stage  # an ensemble's (members.py)
    out = pd.DataFrame({"stage": stage})
    for col in df.columns:
        if col in ("stage", "trains", "time", "member"): continue
        values = pd.to_numeric(df[col], errors="coerce")
        if values.notna().any(): out[col] = values.to_numpy()
    return out if len(out) else None


def plot_history(history, path):
    "Loss (train, valid) and the validation metrics per epoch, all stages in order, stage starts marked."
    metrics = [c for c in history.columns if c not in ("stage", "epoch", "train_loss", "valid_loss")]
    fig, axes = new_figure(1, 2, size=(6, 4))
    x = np.arange(1, len(history) + 1)
    loss_ax, metric_ax = axes[0]
    for col in ("train_loss", "valid_loss"):
        if col in history: loss_ax.plot(x, history[col], marker="o", label=col.replace("_", " "))
    for col in metrics: metric_ax.plot(x, history[col], marker="o", label=col)
    starts = np.nonzero(history["stage"].to_numpy()[1:] != history["stage"].to_numpy()[:-1])[0] + 1
    for ax, title in ((loss_ax, "loss"), (metric_ax, "validation metrics")):
        for s in starts: ax.axvline(s + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch (all stages)")
        ax.set_title(title)
        if ax.lines: ax.legend(fontsize=8)
    stages = list(dict.fromkeys(history["stage"]))
    if len(stages) > 1: fig.suptitle("stages: " + " -> ".join(stages), fontsize=9)
    return save_figure(fig, path)


# ---- confusion matrices and ROC --------------------------------------------------------------

def _matrix(ax, values, labels, title, fmt, xlabel="predicted", ylabel="true", text=None):
    "scikit-learn's ConfusionMatrixDisplay on `ax`; a NaN cell (a row without images) reads n/a, `text` replaces the cells'."
    values = np.asarray(values, dtype=float)
    disp = ConfusionMatrixDisplay(np.nan_to_num(values, nan=0.0), display_labels=labels)
    disp.plot(ax=ax, cmap="Blues", colorbar=False, values_format=fmt, im_kw={"vmin": 0}, text_kw={"fontsize": 8})
    for (i, j), cell in np.ndenumerate(disp.text_):
        if text is not None: cell.set_text(text[i][j])
        elif not np.isfinite(values[i, j]): cell.set_text("n/a")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def plot_confusion(counts, labels, path, title=""):
    "Counts and row-normalised (recall) confusion matrices side by side; rows are the true classes."
    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, counts / rows, np.nan)
    fig, axes = new_figure(1, 2, size=(4.5, 4))
    _matrix(axes[0][0], counts, labels, f"{title} counts", "g")
    _matrix(axes[0][1], norm, labels, f"{title} normalised by true class", ".2f")
    return save_figure(fig, path)


def plot_confusion_multilabel(matrices, path, title=""):
    "One 2x2 matrix per label ({label: [[tn, fp], [fn, tp]]}), each cell with its count and row share."
    n = len(matrices)
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig, axes = new_figure(nrows, ncols, size=(3.2, 3))
    for ax, (label, m) in zip(axes.flat, matrices.items()):
        m = np.asarray(m, dtype=float)
        rows = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(rows > 0, m / rows, np.nan)
        text = [[f"{int(m[i, j])}\n" + ("n/a" if not np.isfinite(share[i, j]) else f"{share[i, j]:.0%}")
                 for j in range(2)] for i in range(2)]
        _matrix(ax, m, ["neg", "pos"], f"{title} {label}", "g", text=text)
    for ax in list(axes.flat)[n:]: ax.axis("off")
    return save_figure(fig, path)


def plot_roc(curves, path, title=""):
    "ROC curves: {name: (fpr, tpr, auc)}; a class without positives or negatives is listed as n/a."
    fig, axes = new_figure(1, 1, size=(5, 5))
    ax = axes[0][0]
    for name, (fpr, tpr, auc) in curves.items():
        if fpr is None: ax.plot([], [], label=f"{name} (AUC n/a)")
        else: RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=auc, name=name).plot(
            ax=ax, curve_kwargs={"label": f"{name} (AUC {auc:.3f})"})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title=f"ROC {title}".strip())
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


# ---- image grids ----------------------------------------------------------------------------

def plot_image_rows(rows, path, title="", thumb=2.0):
    """A grid of images: `rows` is a list of (row title, [(PIL image, caption), ...]); empty cells stay blank."""
    ncols = max([len(items) for _, items in rows] + [1])
    fig, axes = new_figure(len(rows), ncols, size=(thumb, thumb + 0.35))
    for r, (row_title, items) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values(): side.set_visible(False)
            if c < len(items):
                img, caption = items[c]
                ax.imshow(np.asarray(img), cmap="gray" if img.mode == "L" else None, vmin=0, vmax=255)
                ax.set_title(caption, fontsize=7)
            if c == 0: ax.set_ylabel(row_title, fontsize=8)
    if title: fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ---- the figures of one split ---------------------------------------------------------------
# y: class indices (N,) or 0/1 targets (N, C); probs (N, C); pred: predicted indices (N,) or 0/1 decisions (N, C)

def roc_curves(y, probs, classes, multilabel):
    "{class: (fpr, tpr, auc)} one-vs-rest; (None, None, None) for a class without positives or negatives."
    out = {}
    for c, name in enumerate(classes):
        t = (y[:, c] == 1) if multilabel else (y == c)
        if t.all() or not t.any():
            out[name] = (None, None, None)
            continue
        fpr, tpr, _ = roc_curve(t, probs[:, c])
        out[name] = (fpr, tpr, auc_or_nan(t, probs[:, c]))  # the AUC metrics.json reports
    return out


def gallery_picks(y, probs, pred, classes, multilabel, k=4):
    """{class: (best, worst)} row positions: the most confident correct images of the class, and the
    most confidently wrong (single-label: of that true class; multi-label: errors on that label)."""
    out = {}
    if multilabel:
        for c, name in enumerate(classes):
            p, t, call = probs[:, c], y[:, c] == 1, pred[:, c].astype(bool)
            best, wrong = np.nonzero(t & call)[0], np.nonzero(t != call)[0]
            out[name] = (best[np.argsort(-p[best], kind="stable")][:k],
                         wrong[np.argsort(-np.abs(p[wrong] - t[wrong]), kind="stable")][:k])
        return out
    conf = probs[np.arange(len(pred)), pred]
    for c, name in enumerate(classes):
        best, wrong = np.nonzero((y == c) & (pred == c))[0], np.nonzero((y == c) & (pred != c))[0]
        out[name] = (best[np.argsort(-conf[best], kind="stable")][:k], wrong[np.argsort(-conf[wrong], kind="stable")][:k])
    return out


def gradcam_picks(y, probs, pred, multilabel, n=8, seed=0):
    "(worst, sample) row positions: up to n/2 most confidently wrong images, then a seeded random sample of the rest."
    if multilabel:
        wrong = np.nonzero((pred.astype(bool) != (y == 1)).any(axis=1))[0]
        err = np.abs(probs - y).max(axis=1)
    else:
        wrong = np.nonzero(pred != y)[0]
        err = probs[np.arange(len(pred)), pred]
    worst = wrong[np.argsort(-err[wrong], kind="stable")][: n // 2 if n > 1 else n]
    rest = np.setdiff1d(np.arange(len(y)), worst)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rest, size=min(len(rest), n - len(worst)), replace=False))
    return worst, sample


def caption(i, y, probs, pred, classes, multilabel):
    "A short text for image row `i`: true and predicted classes (single-label: with the probability)."
    if multilabel:
        true = ",".join(c for c, v in zip(classes, y[i]) if v) or "none"
        called = ",".join(c for c, v in zip(classes, pred[i]) if v) or "none"
        return f"true {true}\npred {called}"
    return f"true {classes[y[i]]}\npred {classes[pred[i]]} {probs[i, pred[i]]:.2f}"


def thumbnail(path, size=160):
    "The image file as stored (grayscale), shrunk to fit `size`."
    img = load_image(path)
    img.thumbnail((size, size))
    return img


def plot_gallery(part, y, probs, pred, classes, multilabel, path, title="", k=4):
    "Per class: the k most confident correct images, then the k most confidently wrong ones."
    def cell(i, tag):
        return thumbnail(part["path"].iloc[i]), tag + caption(i, y, probs, pred, classes, multilabel)

    rows = []
    for name, (best, worst) in gallery_picks(y, probs, pred, classes, multilabel, k).items():
        items = [cell(i, "best: ") for i in best] + [(Image.new("L", (8, 8), 255), "")] * (k - len(best))
        items += [cell(i, "WRONG: ") for i in worst]
        rows.append((name, items))
    return plot_image_rows(rows, path, title or "most confident correct (left) and most confidently wrong (right)")


def model_inputs_as_images(dl, xb):
    "A batch as the model saw it (resized; normalisation undone) as grayscale PIL images."
    x = xb.detach().as_subclass(torch.Tensor).float().cpu()
    norm = next((t for t in dl.after_batch.fs if isinstance(t, Normalize)), None)
    if norm is not None: x = x * norm.std.float().cpu() + norm.mean.float().cpu()
    arr = (x[:, 0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)  # the three channels hold the same gray
    return [Image.fromarray(a) for a in arr]


def dls_batches(dls):
    "`rows -> (input batch, images as the model saw them)` through a DataLoaders' valid-time transforms."
    def batches(rows):
        dl = test_dl(dls, rows, with_labels=False)
        for batch in dl: yield batch[0], model_inputs_as_images(dl, batch[0])
    return batches


def gradcam_overlays(model, batches, targets):
    "(input image, Grad-CAM overlay) for every image of `batches`, explaining class `targets[j]` for the j-th."
    out, start = [], 0
    for xb, images in batches:
        heat = gradcam(model, xb, [int(t) for t in targets[start:start + len(xb)]])
        out += [(img, overlay(img, h)) for img, h in zip(images, heat)]
        start += len(xb)
    return out


def plot_gradcam(model, batches_of, part, y, probs, pred, classes, multilabel, path, n=8, seed=0, per_row=4):
    """Grad-CAM for the predicted class (multi-label: the most probable label) over the most confidently
    wrong images and a random sample: rows of inputs, each followed by the row of their heatmaps.
    batches_of: `rows -> (input batch, images)`, e.g. dls_batches(dls) or Predictor.gradcam_batches."""
    worst, sample = gradcam_picks(y, probs, pred, multilabel, n, seed)
    picks = np.concatenate([worst, sample]).astype(int)
    if not len(picks): return None
    targets = probs[picks].argmax(axis=1)
    pairs = gradcam_overlays(model, batches_of(part.iloc[list(picks)]), targets)
    rows = []
    for group, start, stop in (("wrong", 0, len(worst)), ("sample", len(worst), len(picks))):
        for s in range(start, stop, per_row):
            chunk = range(s, min(s + per_row, stop))
            rows.append((f"{group}: input",
                         [(pairs[j][0], caption(picks[j], y, probs, pred, classes, multilabel)) for j in chunk]))
            rows.append((f"{group}: Grad-CAM", [(pairs[j][1], f"explains {classes[targets[j]]}") for j in chunk]))
    return plot_image_rows(rows, path, "Grad-CAM (red: regions that raise the explained class's score)")
