"""Calibration: expected calibration error, reliability diagrams, temperature scaling, operating points.

- ECE (Guo et al. 2017): N_BINS equal-width confidence bins, sum over bins of (bin share) x |accuracy -
  mean confidence|. Single-label: the top class's probability against whether the top class is right;
  multi-label: per label, p(label) against the label (and the mean over labels).
- Temperature scaling: probabilities of logits / T, with T > 0 fitted on the valid split by minimising
  the negative log-likelihood (one T for a softmax model, one per label for a sigmoid model; T within
  T_BOUNDS). Dividing logits by a positive number keeps every argmax and, for a binary softmax or a
  per-label sigmoid, every ranking of one class's probability across images: accuracy at argmax, binary
  and per-label AUC, and the decisions at thresholds mapped through the same T (`temper_thresholds`) do
  not change. For 3+ classes a one-vs-rest AUC can move slightly (p_c then depends on the other logits).
- Operating point (binary tasks): of the thresholds on the disease probability whose sensitivity on valid
  reaches a target, the one with the best specificity there (`sensitivity_threshold`), and the
  sensitivity/specificity it gives elsewhere.
"""
import math
import warnings

import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import roc_curve

from ..core.activations import activate as activation
from ..core.jsonio import write_atomic
from .markdown import fmt, md_table

N_BINS = 15
T_BOUNDS = (0.01, 100.0)  # temperatures searched: sharpen 100x .. soften 100x
EPS = 1e-300              # probabilities are clipped here before a log (float64)


# ---- logits and temperatures ------------------------------------------------------------------

def to_logits(probs, multilabel):
    "Logits that give `probs` back (softmax: log p, a valid choice up to a per-row constant; sigmoid: log(p/(1-p)))."
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    if not multilabel: return np.log(p)
    return np.log(p) - np.log(np.clip(1.0 - p, EPS, 1.0))


def temperature_vector(temperature, classes, multilabel):
    "The temperature as an array that divides a logit matrix (N, C): one value, or one per label in class order."
    if temperature is None: return np.float64(1.0)
    if isinstance(temperature, dict):
        return np.array([float(temperature.get(c, 1.0)) for c in classes], dtype=np.float64)
    return np.asarray(temperature, dtype=np.float64)


def apply_temperature(logits, temperature, multilabel):
    "Probabilities of logits / T (T: a number, or an array with one value per label)."
    return activation(np.asarray(logits, dtype=np.float64) / temperature, multilabel)


def temper(probs, temperature, multilabel):
    "Temperature-scaled probabilities from unscaled ones (through `to_logits`); T None: unchanged."
    if temperature is None: return np.asarray(probs, dtype=np.float64)
    return apply_temperature(to_logits(probs, multilabel), temperature, multilabel)


def temper_thresholds(thresholds, temperature, classes):
    """Per-label thresholds on unscaled sigmoid probabilities mapped through the per-label temperatures, so
    every decision `p >= t` stays the same: t -> sigmoid(logit(t) / T)."""
    t_of = temperature_vector(temperature, classes, True)
    t_of = np.broadcast_to(t_of, (len(classes),))
    out = dict(thresholds)
    for c, temp in zip(classes, t_of):
        if c in out:
            out[c] = float(apply_temperature(to_logits(np.array([[out[c]]]), True), temp, True)[0, 0])
    return out


def nll(logits, y, multilabel, temperature=1.0):
    "Mean negative log-likelihood of logits / T: cross-entropy (y: class indices) or binary CE per label (y: 0/1)."
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(y)
    if multilabel:  # log(1 + e^-z) for positives, log(1 + e^z) for negatives, stable
        return float(np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))
    return float(-log_softmax(z, axis=1)[np.arange(len(y)), y.astype(int)].mean())


def _fit_one(loss):
    "The T in T_BOUNDS minimising loss(T) (bounded Brent on log T; the NLL is convex in 1/T), never worse than T = 1."
    from scipy.optimize import minimize_scalar
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda lt: loss(math.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    return t if loss(t) <= loss(1.0) else 1.0  # never worse than no scaling on the data it was fitted on


def fit_temperature(logits, y, multilabel, notes=None, names=None):
    """T minimising the NLL of logits / T on (valid) data: a float (softmax), or a list with one T per label
    (sigmoid; 1.0 for a label without both positives and negatives).

    When every image is on the right side (softmax: the top class is the label; sigmoid: positives have a positive
    logit, negatives a negative one) the NLL keeps falling as T -> 0 and says nothing about how sure the model should
    be: T stays 1 (no sharpening) and `notes` (a list) gets a line saying so."""
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
    notes = [] if notes is None else notes
    separated = "every image of the fitting split is on the right side, so its NLL keeps falling as T -> 0: no sharpening"
    if not multilabel:
        if (logits.argmax(axis=1) == y).all():
            notes.append(f"T = 1: {separated}")
            return 1.0
        return _fit_one(lambda t: nll(logits, y, False, t))
    out = []
    for c in range(logits.shape[1]):
        col, yc = logits[:, [c]], y[:, [c]]
        if not 0 < yc.sum() < len(yc):
            out.append(1.0)
        elif ((col > 0) == (yc == 1)).all():
            notes.append(f"{names[c] if names else f'label {c + 1}'}: T = 1: {separated}")
            out.append(1.0)
        else:
            out.append(_fit_one(lambda t: nll(col, yc, True, t)))
    return out


# ---- calibration error ------------------------------------------------------------------------

def reliability_bins(confidence, correct, n_bins=N_BINS):
    """Equal-width bins over [0, 1]: [{lo, hi, n, confidence, accuracy}] (an empty bin has n 0 and null means).

    Not scikit-learn's `calibration_curve`: it returns the means of the non-empty bins only, without their counts
    (ECE weights each bin by its count, and the report shows empty bins), and puts a confidence on a bin edge in
    the lower bin (np.searchsorted), where a bin here is [lo, hi) with 1.0 in the last one."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n,
                     "confidence": float(confidence[sel].mean()) if n else None,
                     "accuracy": float(correct[sel].mean()) if n else None})
    return bins


def ece_of(bins):
    "Expected calibration error of reliability bins (None when they hold no image)."
    total = sum(b["n"] for b in bins)
    if not total: return None
    return float(sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"]))


def prob_nll(probs, y, multilabel):
    "Mean negative log-likelihood of probabilities (clipped at EPS)."
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    y = np.asarray(y)
    if multilabel:
        q = np.clip(1.0 - np.asarray(probs, dtype=np.float64), EPS, 1.0)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(q)))
    return float(-np.log(p[np.arange(len(y)), y.astype(int)]).mean())


def calibration_of(probs, y, classes, multilabel, n_bins=N_BINS):
    """ECE, NLL and reliability bins of one split's probabilities: single-label top-class
    ({"ece", "nll", "bins"}); multi-label per label ({"ece": mean over labels, "nll", "per_label": {label: ...}})."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    out = {"kind": "per-label" if multilabel else "top-class", "n_bins": n_bins, "n": int(len(y))}
    if not len(y): return {**out, "ece": None, "nll": None}
    out["nll"] = prob_nll(probs, y, multilabel)
    if not multilabel:
        bins = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == y, n_bins)
        return {**out, "ece": ece_of(bins), "bins": bins}
    per = {}
    for c, name in enumerate(classes):
        bins = reliability_bins(probs[:, c], y[:, c] == 1, n_bins)
        per[name] = {"ece": ece_of(bins), "bins": bins}
    eces = [v["ece"] for v in per.values() if v["ece"] is not None]
    return {**out, "ece": float(np.mean(eces)) if eces else None, "per_label": per}


# ---- operating point (binary) -------------------------------------------------------------------

def rates_at(scores, positive, threshold):
    "Sensitivity and specificity of `scores >= threshold` (None where undefined), with the counts."
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    called = scores >= threshold
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return {"sensitivity": float((called & positive).sum() / n_pos) if n_pos else None,
            "specificity": float((~called & ~positive).sum() / n_neg) if n_neg else None,
            "n_positive": n_pos, "n_negative": n_neg}


def sensitivity_threshold(scores, positive, target=0.95):
    """The operating point for a target sensitivity: of the thresholds t whose sensitivity (share of positives with
    score >= t) reaches `target`, the one with the highest specificity and, of those, the highest sensitivity;
    placed half way between the lowest score it calls positive and the next lower score. None without positives."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if not positive.any(): return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no negatives: scikit-learn warns and gives NaN false positive rates
        fpr, sens, cut = roc_curve(positive, scores, drop_intermediate=False)
    fpr, sens, cut = fpr[1:], sens[1:], cut[1:]  # drop the first point (t = inf: nothing called positive)
    spec = 1 - fpr if (~positive).any() else np.ones(len(cut))
    feasible = np.nonzero(sens >= target - 1e-12)[0]
    best = feasible[spec[feasible] >= spec[feasible].max() - 1e-12]
    j = int(best.max())  # lowest threshold keeping that specificity: the most sensitivity for free
    return float((cut[j] + cut[j + 1]) / 2) if j + 1 < len(cut) else float(cut[j])


def min_positives(target):
    """The fewest positives an operating point for `target` sensitivity is estimated from: enough that the target
    allows one miss (20 for 0.95). With fewer, the threshold sits just under the single lowest-scored positive:
    on DarkCovidNet's 10 valid COVID-19 images it ranged from 0.004 to 0.93 across the CV folds."""
    return math.ceil(1 / (1 - target) - 1e-9)


def operating_point(scores_by_split, positive_by_split, target=0.95, chosen_on="valid", default=0.5):
    """The binary operating point for a target sensitivity, chosen on `chosen_on`: {"target_sensitivity",
    "threshold", "chosen_on", <split>: rates at it, "at_default": {<split>: rates at `default`}}; None when that
    split is missing or has no positives."""
    if chosen_on not in scores_by_split: return None
    t = sensitivity_threshold(scores_by_split[chosen_on], positive_by_split[chosen_on], target)
    if t is None: return None
    out = {"target_sensitivity": float(target), "threshold": t, "chosen_on": chosen_on, "default_threshold": default}
    for s in scores_by_split: out[s] = rates_at(scores_by_split[s], positive_by_split[s], t)
    out["at_default"] = {s: rates_at(scores_by_split[s], positive_by_split[s], default) for s in scores_by_split}
    return out


# ---- a run: fit on valid, measure everywhere ----------------------------------------------------

def calibrate_splits(logits, ys, classes, multilabel, calibrate=True, fit_split="valid", n_bins=N_BINS):
    """(probabilities per split, calibration summary) from raw logits per split ({split: (N, C)}) and targets.

    With `calibrate` and a `fit_split` holding both outcomes, T is fitted there and the probabilities returned
    are temperature-scaled; the summary gives T and, per split, ECE/NLL/bins before and after."""
    raw = {s: activation(z, multilabel) for s, z in logits.items()}
    temperature, note = None, None
    if calibrate:
        if fit_split not in logits or not len(ys[fit_split]):
            note = f"no {fit_split} split to fit a temperature on: probabilities left as they are"
        elif not multilabel and len(np.unique(ys[fit_split])) < 2:
            note = f"the {fit_split} split has one class only: no temperature fitted"
        else:
            fit_notes = []
            temperature = fit_temperature(logits[fit_split], ys[fit_split], multilabel, fit_notes, classes)
            if fit_notes: note = "; ".join(fit_notes)
    t_vec = temperature_vector(temperature, classes, multilabel)
    probs = {s: apply_temperature(z, t_vec, multilabel) if temperature is not None else raw[s] for s, z in logits.items()}
    summary = {"method": "temperature scaling" if temperature is not None else "none", "n_bins": n_bins}
    if temperature is not None:
        summary.update(temperature=dict(zip(classes, temperature)) if multilabel else temperature,
                       fitted_on=fit_split, n_fit=int(len(ys[fit_split])))
    if note: summary["note"] = note
    summary["splits"] = {}
    for s in logits:
        after = calibration_of(probs[s], ys[s], classes, multilabel, n_bins)
        entry = {"after" if temperature is not None else "uncalibrated": after}
        if temperature is not None: entry["before"] = calibration_of(raw[s], ys[s], classes, multilabel, n_bins)
        summary["splits"][s] = entry
    return probs, summary


def split_calibration(summary, split):
    "What a split's metrics carry: the ECE/NLL/bins of the probabilities the model gives, and `before` scaling."
    entry = (summary or {}).get("splits", {}).get(split)
    if entry is None: return None
    out = dict(entry.get("after") or entry.get("uncalibrated"))
    if "before" in entry: out["before"] = entry["before"]
    return out


def model_entry(summary):
    "The calibration facts for model.json: method, temperature, where it was fitted, ECE before/after per split."
    if not summary: return {"method": "none"}
    out = {k: v for k, v in summary.items() if k != "splits"}
    out["ece"] = {s: {k: (e.get(k) or {}).get("ece") for k in ("before", "after", "uncalibrated") if k in e}
                  for s, e in summary.get("splits", {}).items()}
    return out


# ---- report --------------------------------------------------------------------------------------

def report_lines(result):
    """The report's calibration section (markdown lines) from a metrics dict: ECE and NLL before/after temperature
    scaling per split (each split's `calibration`), the temperature (`calibration`), the operating point."""
    entry = result.get("calibration") or {}
    splits = {s: result[s]["calibration"] for s in ("valid", "test")
              if isinstance(result.get(s), dict) and result[s].get("calibration")}
    if not splits: return []
    lines = ["## Calibration", ""]
    kind = "per-label (mean over labels)" if any("per_label" in c for c in splits.values()) else "top-class"
    scaled = entry.get("method") == "temperature scaling" and any("before" in c for c in splits.values())
    if scaled:
        t = entry["temperature"]
        shown = ", ".join(f"{c} {v:.3f}" for c, v in t.items()) if isinstance(t, dict) else f"{t:.3f}"
        if entry.get("note"): lines += [f"Note: {entry['note']}.", ""]
        lines += [f"Temperature scaling fitted on the {entry.get('fitted_on', 'valid')} split"
                  + (f" ({entry['n_fit']} images)" if entry.get("n_fit") else "") + f": T = {shown} (logits divided "
                  f"by T; T > 1 softens overconfident probabilities, T < 1 sharpens). The metrics above and `predict` "
                  f"use the scaled probabilities; accuracy and AUC are the same before and after.", ""]
        rows = [[s, fmt(c["before"]["ece"]), fmt(c["ece"]), fmt(c["before"].get("nll")), fmt(c.get("nll"))]
                for s, c in splits.items()]
        lines += md_table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows)
    else:
        why = entry.get("note") or "--calibrate false, or no temperature in the model"
        lines += [f"No temperature scaling ({why}).", ""]
        lines += md_table(["split", "ECE", "NLL"], [[s, fmt(c["ece"]), fmt(c.get("nll"))] for s, c in splits.items()])
    lines += ["", f"ECE: {kind} expected calibration error over {entry.get('n_bins', N_BINS)} equal-width confidence "
                  f"bins (0 is perfect); on the split the temperature was fitted on it is optimistic. Reliability "
                  f"diagrams are among the figures.", ""]
    if result.get("operating_point"): lines += operating_point_lines(result["operating_point"])
    return lines


def external_calibration(probs, y, classes, multilabel, model_calibration, n_bins=N_BINS):
    """(split calibration, top-level entry) for probabilities a temperature-scaled model gave on other data:
    after = as given, before = the same with the temperature undone (logits x T)."""
    after = calibration_of(probs, y, classes, multilabel, n_bins)
    t = (model_calibration or {}).get("temperature")
    if t is None: return after, {"method": "none", "n_bins": n_bins, "note": "the model has no fitted temperature"}
    undo = 1.0 / temperature_vector(t, classes, multilabel)
    before = calibration_of(temper(probs, undo, multilabel), y, classes, multilabel, n_bins)
    entry = {k: v for k, v in model_calibration.items() if k != "ece"}
    entry["fitted_on"] = f"{model_calibration.get('fitted_on', 'valid')} split of the training data"
    return {**after, "before": before}, {**entry, "n_bins": n_bins}


def operating_point_lines(op):
    "The operating point as markdown lines: threshold, and sensitivity/specificity at it and at the default."
    lines = [f"### Operating point: target sensitivity {op['target_sensitivity']:.2f}", "",
             f"Threshold {op['threshold']:.4f} on the disease probability, chosen on {op['chosen_on']} "
             f"(of the thresholds reaching the target there, the one with the best specificity); the model's "
             f"decisions use it.", ""]
    rows = []
    for s, rates in op.items():
        if not isinstance(rates, dict) or "sensitivity" not in rates: continue
        base = op["at_default"].get(s, {})
        rows.append([s, fmt(rates["sensitivity"]), fmt(rates["specificity"]), fmt(base.get("sensitivity")),
                     fmt(base.get("specificity")), f"{rates['n_positive']}/{rates['n_negative']}"])
    lines += md_table(["split", "sensitivity", "specificity", f"sensitivity at {op['default_threshold']}",
                  f"specificity at {op['default_threshold']}", "positives/negatives"], rows)
    test = op.get("test")
    base = op["at_default"].get("test", {})
    if test and test.get("specificity") is not None and base.get("specificity") is not None:
        lines += ["", f"On test this operating point gives specificity {test['specificity']:.3f} (at "
                      f"{op['default_threshold']}: {base['specificity']:.3f}) for sensitivity {fmt(test['sensitivity'])} "
                      f"(at {op['default_threshold']}: {fmt(base.get('sensitivity'))})."]
    return lines + [""]


# ---- figure --------------------------------------------------------------------------------------

def plot_reliability(calibration, path, title=""):
    """A reliability diagram of one split (accuracy against mean confidence per bin, the diagonal is perfect):
    one panel (top class) or one per label, the curve before temperature scaling dashed when there is one."""
    from matplotlib.figure import Figure  # matplotlib's object API: no pyplot state (as plots.py)
    panels = ({"top class": calibration} if "per_label" not in calibration else
              {name: {**v, "before": (calibration.get("before") or {}).get("per_label", {}).get(name)}
               for name, v in calibration["per_label"].items()})
    fig = Figure(figsize=(3.6 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, cal) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect")
        before = (cal.get("before") or {}).get("bins")
        curves = [("before scaling", before, "--"), ("temperature-scaled" if before else "model", cal.get("bins"), "-")]
        for label, bins, style in curves:
            if not bins: continue
            pts = [(b["confidence"], b["accuracy"]) for b in bins if b["n"]]
            if not pts: continue
            ece = ece_of(bins)
            ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{label} (ECE {fmt(ece)})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence" if "per_label" not in calibration else f"p({name})",
               ylabel="accuracy" if "per_label" not in calibration else "fraction positive", title=name)
        ax.legend(fontsize=7, loc="upper left")
    if title: fig.suptitle(title)
    fig.tight_layout()
    return write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
