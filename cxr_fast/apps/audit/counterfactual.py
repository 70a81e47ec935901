"""The acquisition counterfactual: the same X-ray stored or acquired another way, and how far the model moves.

For each held-out image of a run, copies that change only how it was acquired and stored (CHANGES: JPEG at
several qualities, lossless PNG, another aspect by crop or by pad, half the resolution, gamma and contrast, an added
border, text-like marks in a corner) go through the run's model as `predict` runs it. The lungs are the same in
every copy, so a model that reads the disease moves little; one that reads the file moves a lot. Per change (and
per true class): the share of images whose predicted class changes and the mean |change| of P(class).
"""
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...data.images import load_image

MAX_IMAGES = 120  # held-out images counterfactualled (x len(CHANGES) predictions: about a minute on 2 cores)
FLIPS_NOTABLE, FLIPS_STRONG = 0.10, 0.25  # share of predictions one storage change flips: a warning / a shortcut


def _resize(img, w, h): return img.resize((max(1, w), max(1, h)), Image.BILINEAR)


def aspect_crop(img):
    "The central 3:4 (portrait) or 4:3 part: another aspect by crop."
    w, h = img.size
    if w >= h: nw, nh = min(w, round(h * 3 / 4)), h
    else: nw, nh = w, min(h, round(w * 3 / 4))
    left, top = (w - nw) // 2, (h - nh) // 2
    return img.crop((left, top, left + nw, top + nh))


def aspect_pad(img):
    "Padded with black to a third more width: another aspect by pad."
    w, h = img.size
    out = Image.new("L", (round(w * 4 / 3), h), 0)
    out.paste(img, ((out.size[0] - w) // 2, 0))
    return out


def with_border(img, share=0.06):
    "A black frame of `share` of the image's size added around it."
    w, h = img.size
    pad = max(1, round(share * max(w, h)))
    out = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    out.paste(img, (pad, pad))
    return out


def with_marks(img):
    "Text-like marks in the top corners (a side marker and a label strip), white as a scanner burns them in."
    out = img.copy()
    draw, (w, h) = ImageDraw.Draw(out), img.size
    s = max(2, min(w, h) // 24)
    draw.rectangle((s, s, s * 3, s * 4), outline=255, width=max(1, s // 3))  # a letter-like box ("L")
    for k in range(4): draw.rectangle((w - s * (9 - 2 * k), s, w - s * (8 - 2 * k), s * 2), fill=255)  # a label strip
    return out


def gamma(img, g):
    a = np.asarray(img, dtype=np.float32) / 255
    return Image.fromarray((np.clip(a ** g, 0, 1) * 255).round().astype(np.uint8), mode="L")


def contrast(img, k):
    a = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip((a - a.mean()) * k + a.mean(), 0, 255).round().astype(np.uint8), mode="L")


CHANGES = {  # name: (how the copy is made from the decoded image, the format it is stored in)
    "png lossless": (lambda im: im, "png"),
    "jpeg q95": (lambda im: im, "jpeg95"),
    "jpeg q60": (lambda im: im, "jpeg60"),
    "jpeg q30": (lambda im: im, "jpeg30"),
    "aspect by crop": (aspect_crop, "png"),
    "aspect by pad": (aspect_pad, "png"),
    "half resolution": (lambda im: _resize(im, im.size[0] // 2, im.size[1] // 2), "png"),
    "gamma 0.7": (lambda im: gamma(im, 0.7), "png"),
    "gamma 1.4": (lambda im: gamma(im, 1.4), "png"),
    "contrast 0.7": (lambda im: contrast(im, 0.7), "png"),
    "added border": (with_border, "png"),
    "text marks": (with_marks, "png"),
}


def write_copy(img, change, folder, i):
    "Copy i of `img` under `change`, written losslessly unless the change is a JPEG quality; its path."
    make, fmt = CHANGES[change]
    copy = make(img)
    if fmt.startswith("jpeg"):
        path = Path(folder) / f"{i}.jpg"
        copy.save(path, format="JPEG", quality=int(fmt[4:]))
    else:
        path = Path(folder) / f"{i}.png"
        copy.save(path, format="PNG")
    return str(path)


def movement(p0, p1, truth, classes):
    "{'flipped', 'mean_abs_dp': {class: ...}, 'by_class': {true class: {'flipped', 'n'}}} between two prob arrays."
    ok = np.isfinite(p0).all(axis=1) & np.isfinite(p1).all(axis=1)
    p0, p1, truth = p0[ok], p1[ok], np.asarray(truth)[ok]
    flipped = p0.argmax(axis=1) != p1.argmax(axis=1)
    return {"flipped": float(flipped.mean()) if len(flipped) else None, "n": int(ok.sum()),
            "mean_abs_dp": {c: float(np.abs(p1[:, i] - p0[:, i]).mean()) for i, c in enumerate(classes)},
            "by_class": {c: {"flipped": float(flipped[truth == c].mean()), "n": int((truth == c).sum()),
                             "mean_abs_dp": float(np.abs(p1[truth == c, i] - p0[truth == c, i]).mean())}
                         for i, c in enumerate(classes) if (truth == c).any()}}


def counterfactual(predictor, paths, labels, max_images=MAX_IMAGES, bs=32):
    """The acquisition counterfactual of `predictor` on `paths` (with their true `labels`): audit.json's
    `counterfactual` ({'n', 'changes': {change: movement}, 'worst': the change that flips most})."""
    paths, labels = list(paths)[:max_images], list(labels)[:max_images]
    classes = [str(c) for c in predictor.meta["classes"]]
    base = predictor.predict_proba(paths, batch_size=bs)[0].astype(float)
    images = {i: load_image(p) for i, p in enumerate(paths) if np.isfinite(base[i]).all()}
    changes = {}
    with tempfile.TemporaryDirectory(prefix="cxr_fast_counterfactual_") as tmp:
        for change in CHANGES:
            folder = Path(tmp) / change.replace(" ", "_")
            folder.mkdir()
            copies = [write_copy(images[i], change, folder, i) for i in sorted(images)]
            moved = np.full_like(base, np.nan)
            moved[sorted(images)] = predictor.predict_proba(copies, batch_size=bs)[0]
            changes[change] = movement(base, moved, labels, classes)
    worst = max(changes, key=lambda c: changes[c]["flipped"] or 0)
    return {"n": len(images), "classes": classes, "changes": changes, "worst": worst,
            "thresholds": {"notable": FLIPS_NOTABLE, "strong": FLIPS_STRONG}}


def finding(cf):
    "(sentence or None, level 0/1/2): how far storage alone moves the model."
    if not cf or not cf.get("changes"): return None, 0
    worst = cf["changes"][cf["worst"]]
    share = worst["flipped"] or 0
    if share < FLIPS_NOTABLE: return None, 0
    moved = sorted((c for c, m in cf["changes"].items() if (m["flipped"] or 0) >= FLIPS_NOTABLE),
                   key=lambda c: -cf["changes"][c]["flipped"])
    text = (f"Storing the same X-rays another way changes the model's answer: {cf['worst']} flips {share:.0%} of "
            f"{worst['n']} held-out predictions" + (f" ({', '.join(moved[1:4])} too)" if len(moved) > 1 else "") +
            "; a model that reads the lungs moves little under such changes.")
    return text, 2 if share >= FLIPS_STRONG else 1


def lines(cf):
    "audit.md's section."
    if not cf: return []
    if cf.get("error"): return ["## Acquisition counterfactual", "", f"Not run: {cf['error']}", ""]
    classes = cf["classes"]
    rows = [[c, f"{m['flipped']:.3f}", *[f"{m['mean_abs_dp'][k]:.3f}" for k in classes],
             ", ".join(f"{t} {v['flipped']:.2f}" for t, v in m["by_class"].items())] for c, m in cf["changes"].items()]
    from ...evaluation.markdown import md_table
    return ["## Acquisition counterfactual", "",
            f"{cf['n']} held-out images, each copied so that only its storage or acquisition changes; the model "
            f"(as `predict` runs it) on each copy against the original. A warning from {FLIPS_NOTABLE:.0%} of "
            f"predictions flipped by one change, a shortcut from {FLIPS_STRONG:.0%}.", "",
            *md_table(["change", "predictions flipped", *[f"mean abs change P({k})" for k in classes],
                       "flipped, by true class"], rows), ""]
