"""File facts: how well the label is predicted from what is not image content.

Headers only, never pixels: a raster's format, colour mode, bit depth and size (PIL opens lazily),
a DICOM's acquisition tags (pydicom, stop_before_pixels), and the file size. Two groups are kept apart:
acquisition facts (how the image was made and stored) and content-mixed facts (file size and bytes per
pixel: a lossless PNG's size tracks what is in the image, so these partly measure content).
A gradient-boosted classifier with patient-grouped cross-validation turns the facts into out-of-fold
probabilities; a high AUROC for a class means a model can find that class without looking at the lungs.
File names, times and other file-system facts are deliberately not facts.
"""
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from ...core.errors import DataError
from ...evaluation.metrics import N_BOOT, bootstrap_ci, weighted_auc
from ...data.images import is_dicom_file
from ...data.labels import classes_of, is_multilabel

DICOM_TAG_FACTS = {"Manufacturer": "manufacturer", "Modality": "modality", "ViewPosition": "view_position",
                   "PhotometricInterpretation": "photometric", "InstitutionName": "institution"}
ACQUISITION_FACTS = ("format", "mode", "bit_depth", "width", "height", "aspect_ratio", *DICOM_TAG_FACTS.values(),
                     "pixel_spacing")
CONTENT_FACTS = ("file_size", "bytes_per_pixel")
CATEGORICAL_FACTS = {"format", "mode", *DICOM_TAG_FACTS.values()}
MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}  # every other mode: 8
MIN_LEAF = 5  # small leaves, so a fact shared by a handful of images (8 PNGs among 5,900) can still be found
MAX_CATEGORIES = 250  # HistGradientBoosting needs fewer categories than its 255 bins
TOP_FACTS = 5
TOO_FEW_IMAGES, TOO_FEW_PATIENTS = 10, 5  # a class with fewer: "too few images to tell", whatever its AUROC


def fact_groups():
    "{fact: 'acquisition' | 'content'} for every fact read_facts returns."
    return {**{f: "acquisition" for f in ACQUISITION_FACTS}, **{f: "content" for f in CONTENT_FACTS}}


def bits_of_mode(mode):
    "Bits per channel of a PIL mode: 'I;16' -> 16, 'L'/'RGB'/'P' -> 8, '1' -> 1."
    return MODE_BITS.get(mode, 8)


def raster_facts(path):
    "Format, mode, bit depth and size from a raster's header (PIL opens lazily: no pixels are decoded)."
    with Image.open(path) as im:
        width, height = im.size
        return {"format": im.format, "mode": im.mode, "bit_depth": bits_of_mode(im.mode), "width": width, "height": height}


def first_number(value):
    "The first number of a DICOM value (PixelSpacing is a pair), or NaN."
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try: return float(value)
    except (TypeError, ValueError): return np.nan


def dicom_facts(path):
    "Acquisition tags from a DICOM header (pixels not read); a missing tag is a missing value."
    import pydicom
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    tag = lambda k: ds.get(k, None)
    text = lambda k: str(tag(k)).strip() if tag(k) not in (None, "") else None
    spacing = tag("PixelSpacing") if tag("PixelSpacing") is not None else tag("ImagerPixelSpacing")
    number = lambda k: float(tag(k)) if tag(k) not in (None, "") else np.nan
    return {"format": "DICOM", "bit_depth": number("BitsStored"), "width": number("Columns"), "height": number("Rows"),
            "pixel_spacing": first_number(spacing),
            **{fact: text(keyword) for keyword, fact in DICOM_TAG_FACTS.items()}}


def facts_of(path):
    "One row of facts for `path`; an unreadable file gives {'path', 'error'} and no facts."
    try:
        facts = dicom_facts(path) if is_dicom_file(path) else raster_facts(path)
        facts["file_size"] = os.stat(path).st_size
    except Exception as e:  # one bad file must not stop the audit of the rest: it is reported instead
        return {"path": str(path), "error": f"{type(e).__name__}: {e}".strip()[:300]}
    pixels = (facts.get("width") or np.nan) * (facts.get("height") or np.nan)
    facts["aspect_ratio"] = round(facts["width"] / facts["height"], 4) if facts.get("height") else np.nan
    facts["bytes_per_pixel"] = facts["file_size"] / pixels if pixels else np.nan
    return {"path": str(path), "error": None, **facts}


def read_facts(paths, workers=16):
    "Header facts of every path, one row each in order: `path`, the facts (see fact_groups), `error` (None when read)."
    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        rows = list(pool.map(facts_of, paths))
    facts = pd.DataFrame(rows, columns=["path", *ACQUISITION_FACTS, *CONTENT_FACTS, "error"])
    return facts.assign(error=facts["error"].astype(object).where(facts["error"].notna(), None))


def varying_facts(facts, names):
    "The facts among `names` that take more than one value (missing counts as a value); constant ones add nothing."
    return [f for f in names if f in facts.columns and facts[f].astype(object).where(facts[f].notna(), "<missing>").nunique() > 1]


def encoded(facts, names):
    "(float matrix, categorical mask): categorical facts as ordinal codes (missing -> NaN), the rest as numbers."
    columns = []
    for f in names:
        if f in CATEGORICAL_FACTS:
            values = facts[f].astype(object).where(facts[f].notna(), None)
            keep = set(values.value_counts().index[:MAX_CATEGORIES - 1])
            values = values.where(values.isin(keep) | values.isna(), "<other>")
            codes = pd.Categorical(values).codes.astype(float)
            columns.append(np.where(codes < 0, np.nan, codes))
        else:
            columns.append(pd.to_numeric(facts[f], errors="coerce").to_numpy(float))
    X = np.column_stack(columns) if columns else np.zeros((len(facts), 0))
    return X, np.array([f in CATEGORICAL_FACTS for f in names], dtype=bool)


def fold_plan(y, groups, folds):
    "(number of folds, limitations, classes too small to score): fewer folds when the smallest class has fewer patients."
    patients = pd.Series(groups).groupby(pd.Series(y)).nunique()
    too_small = sorted(str(c) for c, n in patients.items() if n < 2)
    scorable = patients[patients >= 2]
    k = int(min(folds, scorable.min())) if len(scorable) else 0
    notes = [f"class {c!r} has fewer than 2 patients: it cannot be cross-validated, so it has no AUROC" for c in too_small]
    if 2 <= k < folds:
        notes.append(f"{k} folds instead of {folds}: class {scorable.idxmin()!r} has only {scorable.min()} patients")
    return k, notes, too_small


def classifier(n_rows, categorical, seed, max_iter):
    "The fact classifier: gradient-boosted trees with small leaves (out-of-fold scoring keeps them honest)."
    return HistGradientBoostingClassifier(max_iter=max_iter, min_samples_leaf=min(MIN_LEAF, max(2, n_rows // 20)),
                                          categorical_features=categorical if categorical.any() else None,
                                          early_stopping=False, random_state=seed)


def fold_probabilities(X, y, train, test, classes, categorical, seed, max_iter):
    "Probabilities over all `classes` for the test rows of one fold (a class absent from training gets 0)."
    out = np.zeros((len(test), len(classes)))
    seen = np.unique(y[train])
    if len(seen) == 1 or X.shape[1] == 0:
        for c in seen: out[:, classes.index(c)] = np.mean(y[train] == c)
        return out
    model = classifier(len(train), categorical, seed, max_iter).fit(X[train], y[train])
    out[:, [classes.index(c) for c in model.classes_]] = model.predict_proba(X[test])
    return out


def out_of_fold(X, y, groups, k, categorical, seed, max_iter):
    "Out-of-fold class probabilities from patient-grouped, stratified k-fold cross-validation."
    classes = sorted(set(y))
    proba = np.zeros((len(y), len(classes)))
    # one thread: these fits are small, and OpenMP threads on a busy machine ran 10x slower than one
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", UserWarning)  # 'least populated class has fewer members than n_splits'
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y, groups)
        for train, test in splits:
            proba[test] = fold_probabilities(X, y, train, test, classes, categorical, seed, max_iter)
    return classes, proba


def rounded(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def per_class_auroc(y, classes, proba, skip=()):
    "{class: one-vs-rest AUROC} from out-of-fold probabilities; None for classes that cannot be scored."
    out = {}
    for i, c in enumerate(classes):
        positive = y == c
        out[str(c)] = None if str(c) in skip or positive.all() or not positive.any() else rounded(roc_auc_score(positive, proba[:, i]))
    return out


def per_class_interval(y, classes, proba, groups, auroc, seed=0):
    "{class: [low, high]}: each AUROC's 95% percentile bootstrap interval by patient (None where there is no AUROC)."
    out = {}
    for i, c in enumerate(classes):
        if auroc.get(str(c)) is None: out[str(c)] = None; continue
        ci = bootstrap_ci(lambda w: {"auroc": weighted_auc(proba[:, i], y == c, w)}, groups, N_BOOT, seed)["auroc"]
        out[str(c)] = [rounded(v) for v in ci] if ci else None
    return out


def too_few(y, groups):
    "The classes with too few images or patients for an AUROC to tell anything (TOO_FEW_IMAGES, TOO_FEW_PATIENTS)."
    counts = pd.DataFrame({"y": y, "g": groups}).groupby("y").agg(images=("g", "size"), patients=("g", "nunique"))
    return sorted(str(c) for c, r in counts.iterrows() if r["images"] < TOO_FEW_IMAGES or r["patients"] < TOO_FEW_PATIENTS)


def cross_validated(X, categorical, y, groups, folds=5, seed=0, max_iter=50, intervals=False):
    """{'auroc': {class: float}, 'ci': {class: [low, high]} (with `intervals`), 'too_few': [classes], 'accuracy',
    'folds', 'limitations'} of predicting `y` from X, grouped by patient."""
    y = np.asarray(y).astype(str)
    k, notes, too_small = fold_plan(y, groups, folds)
    few = too_few(y, groups)
    if k < 2:
        return {"auroc": {c: None for c in sorted(set(y))}, "ci": {}, "too_few": few, "accuracy": None, "folds": 0,
                "limitations": notes + ["too few patients per class for cross-validation: nothing was fitted"]}
    classes, proba = out_of_fold(X, y, groups, k, categorical, seed, max_iter)
    accuracy = float(np.mean(np.asarray(classes)[proba.argmax(1)] == y))
    auroc = per_class_auroc(y, classes, proba, too_small)
    ci = per_class_interval(y, classes, proba, groups, auroc, seed) if intervals else {}
    return {"auroc": auroc, "ci": ci, "too_few": few, "accuracy": rounded(accuracy), "folds": k, "limitations": notes}


def targets(table):
    "{class: labels} to predict: one multi-class problem (key None) or, multi-label, one 0/1 problem per class."
    if not is_multilabel(table): return {None: table["label"].astype(str).to_numpy()}
    return {c: np.where(table[c].to_numpy() == 1, "1", "0") for c in classes_of(table)}


def require_two_classes(table, what="the table"):
    "DataError unless the table has at least two classes (multi-label: each label has both values somewhere)."
    present = sorted(set(table["label"].astype(str))) if not is_multilabel(table) else \
        [c for c in classes_of(table) if table[c].nunique() > 1]
    if not is_multilabel(table) and len(present) < 2:
        raise DataError(f"the audit needs at least two classes; {what} has only {present[0] if present else 'none'}")
    if is_multilabel(table) and not present:
        raise DataError(f"the audit needs at least two classes; every label of {what} has a single value")


def predictability(facts, table, names, folds, seed, max_iter=50, intervals=False):
    "Cross-validated AUROC per class (and accuracy) of the label from the facts `names` (multi-label: per label)."
    X, categorical = encoded(facts, names)
    groups = patient_groups(table)
    results = {}
    for label, y in targets(table).items():
        results[label] = cross_validated(X, categorical, y, groups, folds, seed, max_iter, intervals)
    if None in results: return results[None]
    return {"auroc": {label: r["auroc"].get("1") for label, r in results.items()},
            "ci": {label: r["ci"].get("1") for label, r in results.items()},
            "too_few": [label for label, r in results.items() if "1" in r["too_few"]],
            "accuracy": rounded(np.mean([r["accuracy"] for r in results.values() if r["accuracy"] is not None] or [np.nan])),
            "folds": min(r["folds"] for r in results.values()),
            "limitations": [f"{label}: {n}" for label, r in results.items() for n in r["limitations"]]}


def patient_groups(table):
    "Patient ids for grouping (a row with no patient id is its own patient)."
    return table["patient_id"].astype(object).where(table["patient_id"].notna(), table["path"]).astype(str).to_numpy()


def by_single_fact(facts, table, names, folds, seed):
    "{fact: {class: AUROC}} from each fact alone (a small, fast model per fact)."
    return {f: predictability(facts, table, [f], folds, seed, max_iter=20)["auroc"] for f in names}


def ranking(by_fact):
    "{class: [[fact, auroc], ...]}: the facts that carry each class best, highest first."
    classes = {c for aurocs in by_fact.values() for c in aurocs}
    rank = lambda c: sorted(([f, a[c]] for f, a in by_fact.items() if a.get(c) is not None), key=lambda fa: -fa[1])
    return {c: rank(c)[:TOP_FACTS] for c in sorted(classes)}


def dicom_tag_limitations(facts):
    "One line per DICOM tag that some DICOM files lack (they become missing values)."
    dicom = facts[facts["format"] == "DICOM"]
    notes = []
    for fact in [*DICOM_TAG_FACTS.values(), "pixel_spacing", "bit_depth", "width", "height"]:
        missing = int(dicom[fact].isna().sum())
        if missing: notes.append(f"{missing} of {len(dicom)} DICOM files lack {fact}: treated as a missing value")
    return notes


def readable_rows(table, facts):
    "(table, facts) restricted to the files whose headers were read, index-aligned."
    ok = facts["error"].isna().to_numpy()
    return table.reset_index(drop=True)[ok].reset_index(drop=True), facts[ok].reset_index(drop=True)


def file_facts(table, folds=5, seed=0, facts=None):
    """How well the label is predicted from file facts alone (see the module docstring).

    Returns a JSON-able dict: auroc/accuracy (all facts), acquisition and all ({auroc, accuracy}),
    by_fact ({fact: {class: auroc}}), top_facts ({class: [[fact, auroc], ...]}), counts, unreadable,
    folds, limitations, dropped (constant facts), facts ({fact: group}), seconds.
    `facts` may be a read_facts frame for table.path (read once, shared with source_audit)."""
    start = time.perf_counter()
    require_two_classes(table)
    facts = read_facts(table["path"]) if facts is None else facts.reset_index(drop=True)
    unreadable = [{"path": p, "reason": r} for p, r in zip(facts["path"], facts["error"]) if pd.notna(r)]
    rows, good = readable_rows(table, facts)
    require_two_classes(rows, "the readable part of the table")
    acquisition = varying_facts(good, ACQUISITION_FACTS)
    every = acquisition + varying_facts(good, CONTENT_FACTS)
    acq, all_ = (predictability(good, rows, names, folds, seed, intervals=True) for names in (acquisition, every))
    by_fact = by_single_fact(good, rows, every, folds, seed)
    notes = list(dict.fromkeys(all_["limitations"] + dicom_tag_limitations(good)))
    if not acquisition: notes.append("no acquisition fact varies between images: acquisition AUROC is chance by construction")
    return {"auroc": all_["auroc"], "accuracy": all_["accuracy"], "ci": all_["ci"], "too_few": all_["too_few"],
            "acquisition": {"auroc": acq["auroc"], "accuracy": acq["accuracy"], "ci": acq["ci"]},
            "all": {"auroc": all_["auroc"], "accuracy": all_["accuracy"], "ci": all_["ci"]},
            "by_fact": by_fact, "top_facts": ranking(by_fact),
            "counts": {"images": len(rows), "unreadable": len(unreadable), "dicom": int((good["format"] == "DICOM").sum())},
            "unreadable": unreadable, "folds": all_["folds"], "limitations": notes,
            "dropped": [f for f in fact_groups() if f not in every],
            "facts": {f: g for f, g in fact_groups().items() if f in every},
            "seconds": round(time.perf_counter() - start, 2)}
