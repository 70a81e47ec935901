"""Metric maths: accuracy, balanced accuracy, per-class P/R/F1, ROC-AUC, sensitivity/specificity, thresholds,
and patient-level bootstrap confidence intervals.

Point estimates are scikit-learn's (confusion_matrix, precision_recall_fscore_support, balanced_accuracy_score,
roc_auc_score, ...). The bootstrap recomputes the headline metrics from confusion counts weighted per image
(weights = how often each patient was drawn, all resamples at once as a matrix). Undefined metrics (a class
absent from a split) are `null` with a note.
"""
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, multilabel_confusion_matrix,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score)

from ..core.errors import CxrError
from ..core.jsonio import jsonable
from ..data.labels import is_normal_class, positive_index

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
N_BOOT = 1000
CI_LEVEL = 0.95


# ---- the bootstrap's scores: weighted counts (W: (B, N) weights, one row per resample) ---------------
# Hand-written on purpose: they score all resamples at once as matrix products, where scikit-learn would take
# one call per resample and metric; tests check them against scikit-learn (roc_auc_score(sample_weight=)).

def _div(a, b):
    "a / b, NaN where b == 0."
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(a, axis=-1):
    "Mean over the defined values (NaN where none is)."
    a = np.asarray(a, dtype=float)
    n = np.isfinite(a).sum(axis=axis)
    return _div(np.nansum(a, axis=axis), n)


def confusion_counts(y, pred, n_classes, weights):
    "Weighted confusion counts (B, C, C) for weights (B, N): rows true, columns predicted."
    cell = np.asarray(y) * n_classes + np.asarray(pred)
    onehot = np.zeros((len(cell), n_classes ** 2))
    onehot[np.arange(len(cell)), cell] = 1
    return (np.asarray(weights) @ onehot).reshape(-1, n_classes, n_classes)


def weighted_auc(scores, positive, weights=None):
    """ROC-AUC of `scores` for the boolean `positive`, ties counted half (= scikit-learn's roc_auc_score);
    per row of `weights` (B, N) when given, else one value. NaN without both positives and negatives."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    w = np.ones((1, len(scores))) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(scores, kind="mergesort")
    s, p, w = scores[order], positive[order], w[:, order]
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]  # groups of tied scores
    pos = np.add.reduceat(w * p, starts, axis=1)
    neg = np.add.reduceat(w * ~p, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    auc = _div((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))
    return auc if weights is not None else float(auc[0])


def single_label_scores(y, pred, probs, pos, weights):
    "Headline metrics per weight row: accuracy, balanced accuracy, macro F1 and AUC (B,) each."
    n_classes = probs.shape[1]
    cm = confusion_counts(y, pred, n_classes, weights)
    tp, support, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2), cm.sum(axis=1)
    present = support > 0
    f1 = np.where(present, _div(2 * tp, support + predicted), np.nan)
    aucs = np.stack([weighted_auc(probs[:, c], y == c, weights) for c in range(n_classes)], axis=1)
    return {"accuracy": _div(np.trace(cm, axis1=1, axis2=2), cm.sum(axis=(1, 2))),
            "balanced_accuracy": _nanmean(_div(tp, support)), "macro_f1": _nanmean(f1),
            "auc": aucs[:, pos] if pos is not None else _nanmean(aucs)}


def multilabel_counts(Y, P, weights):
    "Per-label tp, fp, fn, tn (B, C) for 0/1 targets `Y` and decisions `P` (N, C)."
    Y, P = np.asarray(Y, dtype=bool), np.asarray(P, dtype=bool)
    w = np.asarray(weights, dtype=float)
    return w @ (Y & P), w @ (~Y & P), w @ (Y & ~P), w @ (~Y & ~P)


def multilabel_scores(Y, P, probs, weights):
    "Headline multi-label metrics per weight row (labels absent from the data are left out of the macro means)."
    tp, fp, fn, tn = multilabel_counts(Y, P, weights)
    present = (tp + fn) > 0
    exact = np.asarray(weights, dtype=float) @ np.all(np.asarray(Y, bool) == np.asarray(P, bool), axis=1)
    aucs = np.stack([weighted_auc(probs[:, c], Y[:, c] == 1, weights) for c in range(Y.shape[1])], axis=1)
    bal = _nanmean(np.stack([_div(tp, tp + fn), _div(tn, tn + fp)]), axis=0)
    return {"accuracy": _div(tp + tn, tp + tn + fp + fn).mean(axis=1), "balanced_accuracy": _nanmean(bal),
            "macro_f1": _nanmean(np.where(present, _div(2 * tp, 2 * tp + fp + fn), np.nan)),
            "auc": _nanmean(aucs), "exact_match": _div(exact, np.asarray(weights).sum(axis=1))}


# ---- bootstrap -----------------------------------------------------------------------------

def bootstrap_weights(groups, n_boot=N_BOOT, seed=0, max_cells=4_000_000):
    """Resampling weights in chunks of (b, N): each group (patient) drawn with replacement, its images
    weighted by how often it was drawn. One group per image gives the image-level bootstrap."""
    codes, uniques = pd.factorize(pd.Series(groups).astype(str))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_cells // max(1, len(codes))))
    for start in range(0, n_boot, chunk):
        counts = rng.multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), size=min(chunk, n_boot - start))
        yield counts[:, codes].astype(float)


def bootstrap_ci(score_fn, groups, n_boot=N_BOOT, seed=0, level=CI_LEVEL):
    "{metric: [low, high]} percentile intervals of `score_fn(weights) -> {metric: (B,)}` over resamples."
    draws = {}
    for w in bootstrap_weights(groups, n_boot, seed):
        for k, v in score_fn(w).items(): draws.setdefault(k, []).append(v)
    out = {}
    for k, parts in draws.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        out[k] = [float(x) for x in np.percentile(v, q)] if len(v) else None
    return out


def ci_method(groups, n_boot, seed):
    "A sentence saying how the intervals were made."
    n_groups, n = pd.Series(groups).nunique(), len(groups)
    level = "patient-level" if n_groups < n else "image-level (one image per patient id)"
    return (f"{CI_LEVEL:.0%} percentile bootstrap, {level}: {n_groups} patients / {n} images resampled "
            f"with replacement, {n_boot} resamples, seed {seed}")


# ---- the metrics of one split -----------------------------------------------------------------

def _num(x):
    "A float for JSON, None for NaN/undefined."
    return None if x is None else jsonable(float(x))


def _quiet(fn, *args, **kwargs):
    "A scikit-learn metric without its warnings on classes absent from a split (those metrics are nulls with notes)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def auc_or_nan(positive, scores):
    "scikit-learn's ROC-AUC of `scores` for the boolean `positive`; NaN without both positives and negatives."
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any(): return np.nan
    return float(roc_auc_score(positive, scores))


def per_class_prf(y, pred, labels=None):
    "(precision, recall, f1, support) per class or label (scikit-learn), NaN where a ratio is 0/0."
    return _quiet(precision_recall_fscore_support, y, pred, labels=labels, average=None, zero_division=np.nan)


def sensitivity_specificity(cm):
    "(sensitivity, specificity) of a 2x2 confusion matrix [[tn, fp], [fn, tp]]; None where undefined."
    (tn, fp), (fn, tp) = np.asarray(cm)
    return _num(_div(tp, tp + fn)), _num(_div(tn, tn + fp))


def single_label_metrics(y, probs, classes, threshold=0.5, groups=None, n_boot=N_BOOT, seed=0):
    """Metrics of single-label predictions: `y` class indices (N,), `probs` (N, C) probabilities.

    Binary: the disease class (see `positive_index`) is predicted when its probability >= `threshold`,
    and `auc` is its ROC-AUC; multi-class: argmax, and `auc` is the one-vs-rest macro mean.
    Macro means run over the classes present in `y`; precision of a never-predicted class is null
    (counted as 0 in `macro_precision`, as scikit-learn's zero_division=0)."""
    y, probs, n_classes = np.asarray(y, dtype=int), np.asarray(probs, dtype=float), len(classes)
    binary = n_classes == 2
    pos = positive_index(classes) if binary else None
    pred = single_label_pred(probs, classes, threshold)
    labels = np.arange(n_classes)
    cm = confusion_matrix(y, pred, labels=labels)
    precision, recall, f1, support = per_class_prf(y, pred, labels)
    predicted, present = cm.sum(axis=0), support > 0
    f1 = np.where(present, f1, np.nan)  # a class absent from the split has no F1 (left out of the macro mean)
    aucs = [auc_or_nan(y == c, probs[:, c]) for c in labels]
    out = {"n": int(len(y)), "classes": list(classes),
           "decision": f"p({classes[pos]}) >= {threshold}" if binary else "argmax"}
    out.update({"accuracy": _num(accuracy_score(y, pred)), "balanced_accuracy": _num(_quiet(balanced_accuracy_score, y, pred)),
                "macro_f1": _num(_nanmean(f1)), "auc": _num(aucs[pos] if binary else _nanmean(aucs))})
    out["macro_precision"] = _num(np.nan_to_num(precision[present]).mean()) if present.any() else None
    out["macro_recall"] = out["balanced_accuracy"]
    if binary: out["positive_class"] = classes[pos]
    out["per_class"] = {c: {"support": int(support[i]), "predicted": int(predicted[i]), "precision": _num(precision[i]),
                            "recall": _num(recall[i]), "f1": _num(f1[i]), "auc": _num(aucs[i])}
                        for i, c in enumerate(classes)}
    out["disease"] = disease_rates(y, pred, classes, pos, threshold)
    out["confusion_matrix"] = {"labels": list(classes), "rows": "true", "columns": "predicted", "counts": cm.tolist()}
    out["notes"] = single_label_notes(classes, support, predicted)
    if n_boot and len(y):
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        out["ci"] = bootstrap_ci(lambda w: single_label_scores(y, pred, probs, pos, w), groups, n_boot, seed)
        out["ci"]["method"] = ci_method(groups, n_boot, seed)
    return out


def disease_rates(y, pred, classes, pos, threshold):
    """Sensitivity and specificity for each disease class, one-vs-rest at the decision used
    (binary: the threshold; multi-class: argmax), and for 'any disease' vs the normal class."""
    out = {}
    targets = [pos] if pos is not None else [i for i, c in enumerate(classes) if not is_normal_class(c)]
    one_vs_rest = multilabel_confusion_matrix(y, pred, labels=np.arange(len(classes)))
    for i in targets:
        sensitivity, specificity = sensitivity_specificity(one_vs_rest[i])
        out[classes[i]] = {"sensitivity": sensitivity, "specificity": specificity,
                           "decision": f"p >= {threshold}" if pos is not None else "argmax"}
    normal = [i for i, c in enumerate(classes) if is_normal_class(c)]
    if pos is None and len(normal) == 1 and len(classes) > 2:
        sensitivity, specificity = sensitivity_specificity(
            confusion_matrix(y != normal[0], pred != normal[0], labels=[False, True]))
        out["any disease"] = {"sensitivity": sensitivity, "specificity": specificity,
                              "decision": f"predicted class is not {classes[normal[0]]}"}
    return out


def single_label_notes(classes, support, predicted):
    "Why some metrics are null."
    notes = [f"class {c} has no images in this split: its recall, F1, AUC and sensitivity are undefined (null) "
             f"and it is left out of the macro means" for c, s in zip(classes, support) if s == 0]
    notes += [f"class {c} was never predicted: its precision is undefined (null; 0 in macro precision)"
              for c, s, p in zip(classes, support, predicted) if p == 0 and s > 0]
    return notes


def best_f1_threshold(scores, positive):
    """(threshold, F1) maximising F1 of `scores >= threshold`; the threshold lies half way between the
    lowest score called positive and the next lower score. (None, None) without positives."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    if not positive.any(): return None, None
    precision, recall, cut = precision_recall_curve(positive, scores)  # cut: the distinct scores, ascending
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]))
    k = int(np.nonzero(f1 >= f1.max() - 1e-12)[0].max())  # ties (up to rounding): the highest threshold
    return float((cut[k] + cut[k - 1]) / 2 if k else cut[k]), float(f1[k])


def tune_thresholds(Y, probs, classes, default=0.5):
    "({label: threshold}, notes): per label the F1-maximising threshold (`default` for a label without positives)."
    thresholds, notes = {}, []
    for c, name in enumerate(classes):
        t, _ = best_f1_threshold(probs[:, c], np.asarray(Y)[:, c] == 1)
        if t is None: notes.append(f"label {name} has no positives in the tuning split: threshold left at {default}")
        thresholds[name] = t if t is not None else default
    return thresholds, notes


def multilabel_metrics(Y, probs, classes, thresholds=None, groups=None, n_boot=N_BOOT, seed=0):
    """Metrics of multi-label predictions: `Y` 0/1 (N, C), `probs` (N, C), decisions `probs >= thresholds[label]`
    (0.5 when not given). `accuracy` is the mean per-label accuracy; `exact_match` the share of images with
    every label right; macro means run over the labels with positives."""
    Y, probs = np.asarray(Y, dtype=int), np.asarray(probs, dtype=float)
    t = np.array([(thresholds or {}).get(c, 0.5) for c in classes], dtype=float)
    P = (probs >= t).astype(int)
    cms = multilabel_confusion_matrix(Y, P)  # (C, 2, 2): [[tn, fp], [fn, tp]] per label
    tn, fp, fn, tp = cms[:, 0, 0], cms[:, 0, 1], cms[:, 1, 0], cms[:, 1, 1]
    precision, recall, f1, support = per_class_prf(Y, P)
    accuracy = _div(tp + tn, len(Y))
    aucs = [auc_or_nan(Y[:, i] == 1, probs[:, i]) for i in range(len(classes))]
    balanced = [_quiet(balanced_accuracy_score, Y[:, i], P[:, i]) for i in range(len(classes))]
    out = {"n": int(len(Y)), "classes": list(classes), "decision": "p >= per-label threshold",
           "accuracy": _num(accuracy.mean()), "balanced_accuracy": _num(_nanmean(balanced)),
           "macro_f1": _num(_nanmean(np.where(support > 0, f1, np.nan))), "auc": _num(_nanmean(aucs)),
           "exact_match": _num(accuracy_score(Y, P))}
    out["per_class"] = {}
    for i, c in enumerate(classes):
        sensitivity, specificity = sensitivity_specificity(cms[i])
        out["per_class"][c] = {"support": int(support[i]), "predicted": int(tp[i] + fp[i]), "threshold": float(t[i]),
                               "auc": _num(aucs[i]), "f1": _num(f1[i]), "precision": _num(precision[i]),
                               "recall": _num(recall[i]), "accuracy": _num(accuracy[i]),
                               "sensitivity": sensitivity, "specificity": specificity}
    out["confusion_matrix"] = {c: cms[i].tolist() for i, c in enumerate(classes)}
    out["notes"] = [f"label {c} has no positive images in this split: its AUC, recall and F1 are undefined (null) "
                    f"and it is left out of the macro means" for i, c in enumerate(classes) if tp[i] + fn[i] == 0]
    out["notes"] += [f"label {c} has no negative images in this split: its AUC and specificity are undefined (null)"
                     for i, c in enumerate(classes) if tn[i] + fp[i] == 0]
    if n_boot and len(Y):
        groups = np.arange(len(Y)) if groups is None else np.asarray(groups)
        out["ci"] = bootstrap_ci(lambda w: multilabel_scores(Y, P, probs, w), groups, n_boot, seed)
        out["ci"]["method"] = ci_method(groups, n_boot, seed)
    return out


# ---- predictions ---------------------------------------------------------------------------

def single_label_pred(probs, classes, threshold=0.5):
    "Decisions: binary, the disease class when its probability >= threshold; multi-class, argmax."
    if len(classes) != 2: return probs.argmax(axis=1)
    pos = positive_index(classes)
    return np.where(probs[:, pos] >= threshold, pos, 1 - pos)


def decisions(probs, classes, multilabel, thresholds):
    "Predicted class indices (N,), or 0/1 decisions (N, C) at the per-label thresholds."
    if multilabel: return probs >= np.array([thresholds.get(c, 0.5) for c in classes])
    return single_label_pred(probs, classes, thresholds.get("positive", 0.5))


def targets_of(part, classes, multilabel):
    "Class indices (N,) or 0/1 targets (N, C) of a table's rows, in the order of `classes`."
    if multilabel: return part[list(classes)].to_numpy().astype(int)
    index = {c: i for i, c in enumerate(classes)}
    y = part["label"].astype(str).map(index)
    if y.isna().any(): raise CxrError(f"labels {sorted(set(part.loc[y.isna(), 'label']))} are not model classes {classes}")
    return y.to_numpy().astype(int)



def split_metrics(part, probs, classes, multilabel, thresholds, n_boot=N_BOOT, seed=0):
    "The metrics dict of one split's rows and probabilities (patient-level bootstrap when patient ids exist)."
    groups = part["patient_id"].astype(str).to_numpy() if "patient_id" in part.columns else None
    y = targets_of(part, classes, multilabel)
    if multilabel: return multilabel_metrics(y, probs, classes, thresholds, groups, n_boot, seed)
    return single_label_metrics(y, probs, classes, thresholds.get("positive", 0.5), groups, n_boot, seed)
