"""Evaluation: metrics with bootstrap confidence intervals, figures, Grad-CAM, `report.md`.

- `evaluate_run(learn, table, run_dir, config)`: what `train` calls after fitting (valid and test splits);
- `evaluate(model_dir, source, root, ...)`: a trained model on another labelled dataset;
- `compare(*run_dirs)`: the runs' configurations and headline metrics side by side.

Metrics are computed from confusion counts weighted per image, so one code path gives the point
estimate (all weights 1) and the bootstrap (weights = how often each patient was drawn, all
resamples at once as a matrix). Undefined metrics (a class absent from a split) are `null` with a note.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CxrError, DataError
from .table import classes_of, is_multilabel, is_normal_class, positive_index, write_atomic

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
N_BOOT = 1000
CI_LEVEL = 0.95


# ---- class roles ----------------------------------------------------------------------------

# ---- weighted counts (W: (B, N) weights, one row per bootstrap resample) ----------------------------

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


def confusion_counts(y, pred, n_classes, weights=None):
    "Confusion counts (rows true, columns predicted): (C, C), or (B, C, C) for weights (B, N)."
    cell = np.asarray(y) * n_classes + np.asarray(pred)
    if weights is None: return np.bincount(cell, minlength=n_classes ** 2).reshape(n_classes, n_classes)
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
    if x is None: return None
    x = float(x)
    return x if np.isfinite(x) else None


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
    cm = confusion_counts(y, pred, n_classes)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _div(tp, predicted), _div(tp, support)
    f1 = np.where(support > 0, _div(2 * tp, support + predicted), np.nan)
    aucs = [weighted_auc(probs[:, c], y == c) for c in range(n_classes)]
    present = support > 0
    out = {"n": int(len(y)), "classes": list(classes),
           "decision": f"p({classes[pos]}) >= {threshold}" if binary else "argmax"}
    scores = single_label_scores(y, pred, probs, pos, np.ones((1, len(y))))
    out.update({k: _num(v[0]) for k, v in scores.items()})
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
    for i in targets:
        t, p = y == i, pred == i
        out[classes[i]] = {"sensitivity": _num(_div((t & p).sum(), t.sum())),
                           "specificity": _num(_div((~t & ~p).sum(), (~t).sum())),
                           "decision": f"p >= {threshold}" if pos is not None else "argmax"}
    normal = [i for i, c in enumerate(classes) if is_normal_class(c)]
    if pos is None and len(normal) == 1 and len(classes) > 2:
        t, p = y != normal[0], pred != normal[0]
        out["any disease"] = {"sensitivity": _num(_div((t & p).sum(), t.sum())),
                              "specificity": _num(_div((~t & ~p).sum(), (~t).sum())),
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
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last position of each group of tied scores
    tp, fp = np.cumsum(p)[last], np.cumsum(~p)[last]
    f1 = 2 * tp / (tp + fp + positive.sum())
    k = int(np.argmax(f1))  # ties: the highest threshold
    nxt = s[last[k] + 1] if last[k] + 1 < len(s) else None
    t = s[last[k]] if nxt is None else (s[last[k]] + nxt) / 2
    return float(t), float(f1[k])


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
    P = probs >= t
    tp, fp, fn, tn = (v[0] for v in multilabel_counts(Y, P, np.ones((1, len(Y)))))
    out = {"n": int(len(Y)), "classes": list(classes), "decision": "p >= per-label threshold"}
    out.update({k: _num(v[0]) for k, v in multilabel_scores(Y, P, probs, np.ones((1, len(Y)))).items()})
    out["per_class"] = {}
    for i, c in enumerate(classes):
        f1 = _div(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
        out["per_class"][c] = {"support": int(tp[i] + fn[i]), "predicted": int(tp[i] + fp[i]), "threshold": float(t[i]),
                               "auc": _num(weighted_auc(probs[:, i], Y[:, i] == 1)), "f1": _num(f1),
                               "precision": _num(_div(tp[i], tp[i] + fp[i])), "recall": _num(_div(tp[i], tp[i] + fn[i])),
                               "accuracy": _num(_div(tp[i] + tn[i], len(Y))),
                               "sensitivity": _num(_div(tp[i], tp[i] + fn[i])),
                               "specificity": _num(_div(tn[i], tn[i] + fp[i]))}
    out["confusion_matrix"] = {c: [[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i, c in enumerate(classes)}
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


def learner_probs(learn, part, multilabel):
    "Probabilities (N, C) of a fastai learner on a table's rows (the loss's activation; softmax/sigmoid without one)."
    from contextlib import nullcontext

    import torch

    from .blocks import test_dl
    dl = test_dl(learn.dls, part, with_labels=False)
    with (learn.no_bar() if hasattr(learn, "no_bar") else nullcontext()):
        probs, _ = learn.get_preds(dl=dl, with_decoded=False)
    if getattr(learn.loss_func, "activation", None) is None:  # a plain torch loss: these are logits
        probs = torch.sigmoid(probs) if multilabel else torch.softmax(probs, dim=1)
    return probs.float().cpu().numpy()


def split_metrics(part, probs, classes, multilabel, thresholds, n_boot=N_BOOT, seed=0):
    "The metrics dict of one split's rows and probabilities (patient-level bootstrap when patient ids exist)."
    groups = part["patient_id"].astype(str).to_numpy() if "patient_id" in part.columns else None
    y = targets_of(part, classes, multilabel)
    if multilabel: return multilabel_metrics(y, probs, classes, thresholds, groups, n_boot, seed)
    return single_label_metrics(y, probs, classes, thresholds.get("positive", 0.5), groups, n_boot, seed)


# ---- figures -------------------------------------------------------------------------------

def _try_figure(figures, failures, title, draw, *args, **kwargs):
    "Draw one figure; a failure is warned about and listed in the report, never fatal to the run."
    try:
        path = draw(*args, **kwargs)
    except Exception as e:  # a figure must not cost the user the metrics of a finished run
        failures.append(f"{title}: {type(e).__name__}: {e}")
        warnings.warn(f"cxr_fast: figure '{title}' was not drawn ({type(e).__name__}: {e})", stacklevel=2)
        return None
    if path is not None: figures.append((title, Path(path).name))
    return path


def draw_figures(out, parts, probs, classes, multilabel, thresholds, metrics, model=None, dls=None,
                 history=None, gallery_k=4, n_gradcam=8, seed=0):
    "Every figure of an evaluation under `out`: ([(title, file name)], [failure messages])."
    from . import plots
    figures, failures = [], []
    if history is not None:
        _try_figure(figures, failures, "loss and metrics per epoch", plots.plot_history, history, out / "curves.png")
    for split, part in parts.items():
        y, p = targets_of(part, classes, multilabel), probs[split]
        pred = decisions(p, classes, multilabel, thresholds)
        cm = metrics[split]["confusion_matrix"]
        if multilabel:
            _try_figure(figures, failures, f"confusion matrices per label ({split})", plots.plot_confusion_multilabel,
                        cm, out / f"confusion_{split}.png", split)
        else:
            _try_figure(figures, failures, f"confusion matrix ({split})", plots.plot_confusion, cm["counts"], classes,
                        out / f"confusion_{split}.png", split)
        _try_figure(figures, failures, f"ROC curves ({split})", lambda: plots.plot_roc(
            plots.roc_curves(y, p, classes, multilabel), out / f"roc_{split}.png", split))
        _try_figure(figures, failures, f"best and worst images ({split})", plots.plot_gallery, part, y, p, pred, classes,
                    multilabel, out / f"gallery_{split}.png", k=gallery_k)
    main = "test" if "test" in parts else next(iter(parts), None)
    if model is not None and dls is not None and main is not None and n_gradcam:
        part = parts[main]
        y, p = targets_of(part, classes, multilabel), probs[main]
        _try_figure(figures, failures, f"Grad-CAM ({main})", plots.plot_gradcam, model, dls, part, y, p,
                    decisions(p, classes, multilabel, thresholds), classes, multilabel, out / f"gradcam_{main}.png",
                    n=n_gradcam, seed=seed)
    return figures, failures


# ---- report.md -----------------------------------------------------------------------------

def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)): return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def md_table(header, rows):
    "A markdown table (cells already strings, '|' escaped)."
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]


def synthetic_line(sources):
    "The plain warning when any data is generated (source 'phantom'), else None."
    if not any("phantom" in str(s) for s in sources): return None
    return ("> **Synthetic data.** The images are generated phantoms (source `phantom`), not chest X-rays: "
            "these numbers show that the pipeline works, not how a model does on patients.")


def data_section(table, leakage=True):
    "Sources, split method, class counts per split, and (with `leakage`) leakage warnings of a canonical table."
    from .table import format_problems, summarize
    counts = summarize(table)
    sources = ", ".join(map(str, table["source"].unique())) if "source" in table else table.attrs.get("source")
    lines = ["## Data", "", f"- sources: {sources}",
             f"- task: {table.attrs.get('task', '?')} ({'multi-label' if is_multilabel(table) else 'single-label'}); "
             f"classes: {', '.join(classes_of(table))}",
             f"- split: {table.attrs.get('split_method', 'as given in the table')}", "",
             *md_table(["", *counts.columns], [[i, *map(str, r)] for i, r in zip(counts.index, counts.to_numpy())]), ""]
    problems = table.attrs.get("problems", [])
    leaks = [p for p in problems if p["kind"] in ("shared_patient", "near_duplicate")]
    absent = [p for p in problems if p["kind"] == "class_absent"]
    if leaks: lines += ["**Leakage warning:** images of one patient, or near-identical images, are in more than one split; "
                        "the metrics below may be optimistic.", "", "```", *format_problems(leaks, 10), "```", ""]
    elif leakage: lines += ["No patient or near-duplicate image is shared between splits.", ""]
    if absent: lines += ["**Classes absent from a split** (their metrics there are n/a):", "",
                         *[f"- {p['detail']}" for p in absent], ""]
    other = [p for p in problems if p["kind"] not in ("shared_patient", "near_duplicate", "class_absent")]
    if other: lines += ["Other problems found while building the table (rows dropped):", "",
                        "```", *format_problems(other, 5), "```", ""]
    return lines


def config_section(config):
    "The configuration as a key/value table."
    if not config: return ["## Configuration", "", "Not recorded.", ""]
    rows = [[k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in config.items()]
    return ["## Configuration", "", *md_table(["key", "value"], rows), ""]


def _with_ci(m, key):
    ci = (m.get("ci") or {}).get(key)
    return _fmt(m.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def metrics_section(result):
    "Headline metrics with confidence intervals, per-class tables, notes and thresholds."
    splits = [s for s in ("valid", "test") if s in result]
    multilabel = any("exact_match" in result[s] for s in splits)
    keys = [*HEADLINE, *(["exact_match"] if multilabel else [])]
    lines = ["## Metrics", "", *md_table(["split", "images", *[k.replace("_", " ") for k in keys]],
                                         [[s, result[s]["n"], *[_with_ci(result[s], k) for k in keys]] for s in splits]), ""]
    methods = {result[s]["ci"]["method"] for s in splits if result[s].get("ci")}
    lines += [f"In brackets: {m}." for m in methods] + [""]
    if multilabel:
        lines += ["Accuracy is the mean per-label accuracy; exact match the share of images with every label right.", ""]
    for s in splits:
        m = result[s]
        lines += [f"### {s} ({m['n']} images; decision: {m.get('decision', '')})", ""]
        if multilabel:
            cols = ["support", "threshold", "auc", "f1", "accuracy", "sensitivity", "specificity"]
            lines += md_table(["label", *cols], [[c, *[_fmt(v[k]) for k in cols]] for c, v in m["per_class"].items()])
        else:
            cols = ["support", "predicted", "precision", "recall", "f1", "auc"]
            lines += md_table(["class", *cols], [[c, *[_fmt(v[k]) for k in cols]] for c, v in m["per_class"].items()])
            lines += ["", f"Macro precision {_fmt(m.get('macro_precision'))}, "
                          f"macro recall {_fmt(m.get('macro_recall'))}.", ""]
            lines += md_table(["disease", "sensitivity", "specificity", "decision"],
                              [[c, _fmt(v["sensitivity"]), _fmt(v["specificity"]), v["decision"]]
                               for c, v in m["disease"].items()])
        lines += [""] + [f"- note: {n}" for n in m.get("notes", [])] + ([""] if m.get("notes") else [])
    if result.get("thresholds"): lines += [f"Thresholds: {json.dumps(result['thresholds'])}", ""]
    return lines


def figures_section(figures, failures):
    "Links to every figure (relative), and the ones that failed."
    lines = ["## Figures", ""]
    for title, name in figures: lines += [f"### {title}", "", f"![{title}]({name})", ""]
    if failures: lines += ["Figures that could not be drawn:", "", *[f"- {f}" for f in failures], ""]
    return lines


def write_report(out, title, result, figures=(), failures=(), table=None, config=None, extra=(), leakage=True):
    "Write `report.md` under `out`: synthetic-data warning, data, configuration, metrics, figures."
    sources = (list(table["source"].unique()) if table is not None and "source" in table
               else [(config or {}).get("source")])
    lines = [f"# {title}", ""]
    warning = synthetic_line(sources)
    if warning: lines += [warning, ""]
    lines += list(extra)
    if table is not None: lines += data_section(table, leakage)
    lines += config_section(config) + metrics_section(result) + figures_section(figures, failures)
    return write_atomic(Path(out) / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))


# ---- JSON ----------------------------------------------------------------------------------

def jsonable(obj):
    "Plain JSON values: numpy scalars and arrays converted, NaN/inf -> None."
    if isinstance(obj, dict): return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)): return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)): return int(obj)
    if isinstance(obj, (float, np.floating)): return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)): return bool(obj)
    return obj


def write_json(path, obj):
    "Write JSON atomically."
    return write_atomic(path, lambda p: p.write_text(json.dumps(jsonable(obj), indent=1, default=str)))


def read_json(path):
    "A JSON file's content, or None when it is absent."
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


# ---- after a training run ------------------------------------------------------------------

def split_rows(table, split):
    "The rows of one split with a fresh index (attrs kept)."
    part = table[table["split"] == split].reset_index(drop=True)
    part.attrs = dict(table.attrs)
    return part


def learner_classes(learn, table):
    "The model's output order: the DataLoaders' vocab, else the table's classes."
    try:
        vocab = learn.dls.vocab
    except AttributeError:
        vocab = None
    return [str(v) for v in vocab] if vocab is not None else classes_of(table)


def run_thresholds(parts, probs, classes, multilabel, threshold=0.5):
    "(thresholds, notes): multi-label, tuned per label on valid; binary, {'positive': threshold}; else {}."
    if not multilabel: return ({"positive": float(threshold)} if len(classes) == 2 else {}), []
    if "valid" not in parts: return {c: 0.5 for c in classes}, ["no valid split to tune thresholds on: 0.5 for every label"]
    thresholds, notes = tune_thresholds(targets_of(parts["valid"], classes, True), probs["valid"], classes)
    return thresholds, ["thresholds tuned on this split (per label, maximising F1): its F1 is optimistic", *notes]


def evaluate_run(learn, table, run_dir, config=None, *, threshold=None, n_boot=N_BOOT, seed=0, gallery_k=4,
                 n_gradcam=8):
    """Metrics of a trained learner on the table's valid and test rows, figures and `report.md` in `run_dir`.

    Writes RUN_DIR/metrics.json = {"valid": {...}, "test": {...}, "thresholds": {...}} and returns the same dict.
    threshold: binary decision threshold on the disease class (default: config['threshold'] or 0.5)."""
    from .plots import read_history
    run_dir = Path(run_dir)
    config = config if config is not None else (read_json(run_dir / "config.json") or {})
    multilabel, classes = is_multilabel(table), learner_classes(learn, table)
    parts = {s: split_rows(table, s) for s in ("valid", "test") if (table["split"] == s).any()}
    if not parts: raise CxrError("the table has no valid or test rows to evaluate")
    probs = {s: learner_probs(learn, part, multilabel) for s, part in parts.items()}
    threshold = threshold if threshold is not None else (config.get("threshold") or 0.5)
    thresholds, notes = run_thresholds(parts, probs, classes, multilabel, threshold)
    result = {s: split_metrics(parts[s], probs[s], classes, multilabel, thresholds, n_boot, seed) for s in parts}
    result[next(iter(parts))]["notes"] += notes  # valid when there is one: where the thresholds were tuned
    result["thresholds"] = thresholds
    result = jsonable(result)
    history = read_history(run_dir / "history.csv")
    figures, failures = draw_figures(run_dir, parts, probs, classes, multilabel, thresholds, result, learn.model,
                                     learn.dls, history, gallery_k, n_gradcam, seed)
    write_json(run_dir / "metrics.json", result)
    extra = [] if history is not None else ["No training history (history.csv) in this run folder: no curves.", ""]
    write_report(run_dir, f"Run report: {run_dir.resolve().name}", result, figures, failures, table, config, extra)
    return result


# ---- a trained model on other data ---------------------------------------------------------

def default_task(source, meta):
    "The task to read other data with: the model's own task when the source has it, else `folders`."
    from .sources import get_source
    if source == "table": return None
    tasks = get_source(source).TASKS
    if meta["task"] in tasks: return meta["task"]
    if "folders" in tasks: return "folders"
    raise CxrError(f"source {source} has no task {meta['task']!r} (the model's); pass --task, one of: {', '.join(tasks)}")


def onto_model(table, model_classes, class_map=None):
    """(rows the model can be scored on, their classes, {unknown class: its rows}, mapping):
    data classes renamed by `class_map` ({data class: model class}); others keep their name, and those
    the model does not know are set aside, not guessed."""
    from .table import parse_class_map
    mapping = parse_class_map(class_map) or {}
    data_classes = classes_of(table)
    unknown_keys = [k for k in mapping if k not in data_classes]
    if unknown_keys: raise DataError(f"--classes names {unknown_keys}, not among this data's classes {data_classes}")
    bad = sorted({v for v in mapping.values() if v not in model_classes})
    if bad: raise DataError(f"--classes maps onto {bad}, which the model does not have; its classes are {model_classes}")
    if is_multilabel(table):
        table = table.rename(columns=mapping)
        labels = [mapping.get(c, c) for c in data_classes]
        shared = [c for c in model_classes if c in labels]
        unknown = {c: table[table[c] == 1] for c in labels if c not in model_classes}
        if not shared:
            raise DataError(f"none of this data's labels {labels} is a model label {model_classes}; map them with --classes")
        return table.reset_index(drop=True), shared, unknown, mapping
    label = table["label"].astype(str).map(lambda c: mapping.get(c, c))
    known = label.isin(model_classes)
    unknown = {c: table[(label == c).to_numpy()].reset_index(drop=True) for c in dict.fromkeys(label[~known])}
    part = table[known.to_numpy()].assign(label=label[known]).reset_index(drop=True)
    if part.empty: raise DataError(f"no image of this data has a class the model knows ({model_classes}); "
                                   f"map them with --classes 'DATA_CLASS->MODEL_CLASS,...'")
    return part, list(model_classes), unknown, mapping


def model_learner(model_dir, sample_path, bs=32):
    """(fastai Learner, meta) for a model dir: its weights (weights_only) and the training-time item and batch
    transforms (resize, ImageNet normalisation, no augmentation), for test DataLoaders and Grad-CAM."""
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

    from .blocks import cxr_datablock
    from .modelio import load_model_module
    model, meta = load_model_module(model_dir)
    classes, multilabel = list(meta["classes"]), bool(meta["multilabel"])
    stub = pd.DataFrame({"path": [str(sample_path)] * 2, "patient_id": ["a", "b"], "split": ["train", "valid"],
                         "source": "model"})
    if multilabel: stub = stub.assign(**{c: 0 for c in classes})
    else: stub["label"] = classes[0]
    stub.attrs.update(classes=classes, multilabel=multilabel)
    size = meta["img_size"]
    size = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    dls = cxr_datablock(stub, size, aug="none", resize_method=meta.get("resize_method") or "squish").dataloaders(
        stub, bs=bs, num_workers=0)
    learn = Learner(dls, model.to(dls.device), loss_func=BCEWithLogitsLossFlat() if multilabel else CrossEntropyLossFlat())
    return learn, meta


def probability_fn(model_dir, learn, multilabel):
    """A function `rows -> probabilities (N, C)` in the model's class order, NaN rows for images that could
    not be predicted: `cxr_fast.inference.Predictor` (what `predict` uses) when it is there, else the learner."""
    try:
        from .inference import Predictor
    except ImportError:
        return lambda part: learner_probs(learn, part, multilabel)
    predictor = Predictor.from_dir(model_dir)
    return lambda part: predictor.predict_proba(part["path"].astype(str).tolist())[0].astype(float)


def unknown_summary(unknown, probs_of, model_classes, multilabel):
    "{unknown class: {'images': n, 'predicted_as': {model class: n}}}: how the model called classes it does not know."
    out = {}
    for name, rows in unknown.items():
        out[name] = {"images": int(len(rows))}
        if multilabel or rows.empty: continue
        probs = probs_of(rows)
        pred = probs[~np.isnan(probs).any(axis=1)].argmax(axis=1)
        out[name]["predicted_as"] = {c: int((pred == i).sum()) for i, c in enumerate(model_classes)}
    return out


def seen_in_training(model_dir, paths):
    "How many of `paths` are files of the run's own table (RUN_DIR/table.csv next to the model dir): 0 when unknown."
    table_csv = Path(model_dir).parent / "table.csv"
    if not table_csv.is_file(): return 0
    seen = set(pd.read_csv(table_csv, usecols=["path"])["path"].astype(str).map(lambda p: str(Path(p).resolve())))
    return int(sum(str(Path(p).resolve()) in seen for p in paths))


def evaluation_extra(source, root, mapping, unknown_info, n_failed, n_seen):
    "The report lines on how the other dataset was matched to the model."
    lines = ["## Evaluated data", "", f"Source `{source}` at `{root}`: every image is used as a test image.", ""]
    if n_seen: lines += [f"**Leakage warning:** {n_seen} of these images are in the table the model was trained and "
                         f"validated on (its run's table.csv): these metrics are optimistic.", ""]
    if mapping: lines += ["Class mapping (data -> model): " + ", ".join(f"{k} -> {v}" for k, v in mapping.items()), ""]
    if unknown_info:
        lines += ["**Classes the model does not know** (not scored, not guessed):", ""]
        lines += md_table(["data class", "images", "the model called them"],
                          [[c, v["images"], ", ".join(f"{k}: {n}" for k, n in v.get("predicted_as", {}).items()) or "-"]
                           for c, v in unknown_info.items()])
        lines += [""]
    if n_failed: lines += [f"{n_failed} images could not be predicted and are left out.", ""]
    return lines


def evaluate(model_dir, source, root, task=None, out=None, classes=None, *, split="all", n_boot=N_BOOT, seed=0,
             bs=32, gallery_k=4, n_gradcam=8, **source_options):
    """Evaluate a trained model (model dir or run dir) on another labelled dataset; write metrics.json, figures
    and report.md under `out` (default: RUN_DIR/eval-<source>-<root name>) and return the metrics dict.

    classes: map this data's class names onto the model's, 'COVID-19->Covid-19,Normal->No_findings'; data classes
    the model does not know are counted in the result's `unknown_classes`, not scored.
    split: 'all' (default) or one of the source's own splits (train/valid/test) to use."""
    from .data import load_table
    from .modelio import find_model_dir, read_model_json
    from .table import absent_classes
    mdir = find_model_dir(model_dir)
    meta = read_model_json(mdir)
    model_classes, multilabel = [str(c) for c in meta["classes"]], bool(meta["multilabel"])
    table = load_table(source, root, task or default_task(source, meta), valid_pct=0, test_pct=0, seed=seed,
                       dedup="off", **source_options)
    if split != "all": table = split_rows(table, split)
    if table.empty: raise CxrError(f"no images in split {split!r} of this data")
    if is_multilabel(table) != multilabel:
        raise CxrError(f"the model is {'multi' if multilabel else 'single'}-label but this data's task is not; "
                       f"pick another --task")
    part, eval_classes, unknown, mapping = onto_model(table, model_classes, classes)
    part["split"] = "test"
    out = Path(out) if out else mdir.parent / ("eval-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in
                                                                 f"{source}-{Path(str(root).split(',')[0]).name}"))
    learn, _ = model_learner(mdir, part["path"].iloc[0], bs)
    probs_of = probability_fn(mdir, learn, multilabel)
    probs = probs_of(part)
    ok = ~np.isnan(probs).any(axis=1)
    if not ok.any(): raise CxrError(f"none of the {len(part)} images could be predicted (unreadable files?)")
    part, probs = part[ok].reset_index(drop=True), probs[ok]
    index = [model_classes.index(c) for c in eval_classes]
    probs = probs[:, index]
    part.attrs = {**table.attrs, "classes": eval_classes, "split_method": "all images used as test (evaluation only)",
                  "problems": [p for p in table.attrs.get("problems", []) if p["kind"] != "class_absent"]
                  + absent_classes(part, eval_classes, multilabel)}
    thresholds = dict(meta.get("thresholds") or {}) if (multilabel or len(model_classes) == 2) else {}
    result = {"test": split_metrics(part, probs, eval_classes, multilabel, thresholds, n_boot, seed),
              "thresholds": thresholds, "unknown_classes": unknown_summary(unknown, probs_of, model_classes, multilabel),
              "class_map": mapping, "images_not_predicted": int((~ok).sum()),
              "images_in_training_table": seen_in_training(mdir, part["path"])}
    if multilabel and len(eval_classes) < len(model_classes):
        missing = sorted(set(model_classes) - set(eval_classes))
        result["test"]["notes"].append(f"model labels not in this data, not scored: {missing}")
    result = jsonable(result)
    config = {"model_dir": str(mdir), "arch": meta["arch"], "model_task": meta["task"], "source": source, "root": str(root),
              "task": table.attrs.get("task"), "classes": classes, "split": split, **source_options}
    figures, failures = draw_figures(out, {"test": part}, {"test": probs}, eval_classes, multilabel, thresholds, result,
                                     learn.model if index == list(range(len(model_classes))) else None, learn.dls,
                                     None, gallery_k, n_gradcam, seed)
    write_json(out / "metrics.json", result)
    write_json(out / "config.json", config)
    extra = evaluation_extra(source, root, mapping, result["unknown_classes"], result["images_not_predicted"],
                             result["images_in_training_table"])
    write_report(out, f"Evaluation of {mdir} on {source}", result, figures, failures, part, config, extra, leakage=False)
    result["out"] = str(out)
    return result


def evaluate_command(model_dir, source, root, task=None, out=None, classes=None, split="all", n_boot=N_BOOT, seed=0,
                     bs=32, gradcam=8, **source_options):
    """Evaluate a trained model on another labelled dataset: metrics with 95% CIs, figures, report.md.

    Args:
      model_dir: a model folder, or a run folder (its model/ is used)
      source: coronahack, folders, siim, phantom, or 'table' for a saved table CSV
      root: the dataset folder
      task: the source's task (default: the model's task, or `folders`)
      out: output folder (default: RUN_DIR/eval-<source>-<root name>)
      classes: map data classes onto the model's, e.g. 'COVID-19->Covid-19,Normal->No_findings';
               classes the model does not know are counted in the report, not scored
      split: all, or only the source's own train / valid / test images
      n_boot: bootstrap resamples for the confidence intervals (0: none)
      gradcam: how many images get a Grad-CAM heatmap (0: none)
      source_options: source options, e.g. --kaggle-split false (coronahack)
    """
    from .args import as_bool, as_choice, as_int
    if "kaggle_split" in source_options:
        source_options["kaggle_split"] = as_bool(source_options["kaggle_split"], "kaggle-split")
    result = evaluate(str(model_dir), str(source), str(root), task=task, out=out, classes=classes,
                      split=as_choice(split, ["all", "train", "valid", "test"], "split"), n_boot=as_int(n_boot, "n-boot", 0),
                      seed=as_int(seed, "seed"), bs=as_int(bs, "bs", 1), n_gradcam=as_int(gradcam, "gradcam", 0),
                      **source_options)
    print("\n".join(md_table(["split", "images", *[k.replace("_", " ") for k in HEADLINE]],
                              [["test", result["test"]["n"], *[_with_ci(result["test"], k) for k in HEADLINE]]])))
    for name, info in result["unknown_classes"].items():
        print(f"not scored: {info['images']} images of class {name}, unknown to the model")
    print(f"wrote {result['out']}/report.md")
    return 0


# ---- comparing runs ------------------------------------------------------------------------

IGNORED_CONFIG_KEYS = {"out", "run_dir", "resume", "model_dir"}
COMPARE_METRICS = ("accuracy", "macro_f1", "auc")


def run_folders(run_dirs):
    "The run folders named (a folder holding runs stands for each of them), each with metrics.json or config.json."
    found = []
    for d in map(Path, run_dirs):
        if (d / "metrics.json").is_file() or (d / "config.json").is_file(): found.append(d)
        elif d.is_dir() and any((s / "metrics.json").is_file() for s in d.iterdir() if s.is_dir()):
            found += sorted(s for s in d.iterdir() if (s / "metrics.json").is_file())
        else: raise CxrError(f"{d} is not a run folder (no metrics.json or config.json in it)")
    if not found: raise CxrError("name at least one run folder to compare")
    return found


def _cell(v):
    if isinstance(v, (dict, list, tuple)): return json.dumps(v, default=str)
    return v


def compare(*run_dirs, out=None):
    """A DataFrame, one row per run: arch, task, the configuration keys whose values differ between the runs,
    and valid/test accuracy, macro F1 and AUC. With `out`, also written there as a markdown table."""
    runs = run_folders(run_dirs)
    configs, rows = [], []
    for d in runs:
        cfg = read_json(d / "config.json") or {}
        model = read_json(d / "model" / "model.json") or {}
        metrics = read_json(d / "metrics.json") or {}
        configs.append(cfg)
        row = {"run": d.name, "arch": cfg.get("arch", model.get("arch")), "task": cfg.get("task", model.get("task"))}
        for split in ("valid", "test"):
            for k in COMPARE_METRICS: row[f"{split}_{k}"] = (metrics.get(split) or {}).get(k)
        rows.append(row)
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in IGNORED_CONFIG_KEYS | {"arch", "task"}]
    differ = [k for k in keys if len({json.dumps(_cell(c.get(k)), default=str) for c in configs}) > 1]
    df = pd.DataFrame(rows)
    for k in reversed(differ): df.insert(3, k, [_cell(c.get(k)) for c in configs])
    metric_cols = [c for c in df.columns if c.startswith(("valid_", "test_"))]
    df[metric_cols] = df[metric_cols].astype(float)
    if out: write_atomic(out, lambda p: p.write_text(compare_markdown(df) + "\n"))
    return df


def compare_markdown(df):
    "The comparison as a markdown table (metrics to 3 decimals, n/a where missing)."
    cells = [[_fmt(v) if isinstance(v, float) else ("n/a" if v is None else str(v)) for v in r]
             for r in df.itertuples(index=False)]
    return "\n".join(md_table(list(df.columns), cells))


def compare_command(*run_dirs, out=None):
    """Compare runs: a markdown table of their differing configuration and headline metrics.

    Args:
      run_dirs: run folders (or a folder holding run folders)
      out: also write the table to this markdown file
    """
    df = compare(*run_dirs, out=out)
    print(compare_markdown(df))
    if out: print(f"\nwrote {out}")
    return 0
