"""The run report: every figure of an evaluation (plots.py draws them) and `report.md`."""
import json
import warnings
from pathlib import Path

import pandas as pd

from . import calibration, plots
from .metrics import HEADLINE, decisions, targets_of
from ..data.labels import classes_of, is_multilabel
from ..data.table import format_problems, summarize
from ..core.jsonio import write_atomic
from .card import describe_provenance
from .markdown import fmt, md_table


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


def draw_figures(out, parts, probs, classes, multilabel, thresholds, metrics, model=None, batches_of=None,
                 history=None, gallery_k=4, n_gradcam=8, seed=0):
    """Every figure of an evaluation under `out`: ([(title, file name)], [failure messages]).

    model, batches_of: for Grad-CAM, the model and `rows -> (input batch, images)` (plots.dls_batches,
    Predictor.gradcam_batches)."""
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
        if metrics[split].get("calibration"):
            _try_figure(figures, failures, f"reliability diagram ({split})", calibration.plot_reliability,
                        metrics[split]["calibration"], out / f"reliability_{split}.png", split)
    main = "test" if "test" in parts else next(iter(parts), None)
    if model is not None and batches_of is not None and main is not None and n_gradcam:
        part = parts[main]
        y, p = targets_of(part, classes, multilabel), probs[main]
        _try_figure(figures, failures, f"Grad-CAM ({main})", plots.plot_gradcam, model, batches_of, part, y, p,
                    decisions(p, classes, multilabel, thresholds), classes, multilabel, out / f"gradcam_{main}.png",
                    n=n_gradcam, seed=seed)
    return figures, failures


# ---- report.md -----------------------------------------------------------------------------

def synthetic_line(sources):
    "The plain warning when any data is generated (source 'phantom'), else None."
    if not any("phantom" in str(s) for s in sources): return None
    return ("> **Synthetic data.** The images are generated phantoms (source `phantom`), not chest X-rays: "
            "these numbers show that the pipeline works, not how a model does on patients.")


def data_section(table, leakage=True):
    "Sources, split method, class counts per split, and (with `leakage`) leakage warnings of a canonical table."
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
    lonely = [p for p in problems if p["kind"] == "single_source_class"]
    if lonely: lines += ["**Warning: classes from one source only** (the source's look can stand in for the class):", "",
                         *[f"- {p['detail']}" for p in lonely], ""]
    flagged = [p for p in problems if p["kind"] == "input_warning"]
    if flagged: lines += [f"**Input warnings** (rows kept): {len(flagged)} images do not look like frontal chest "
                          f"radiographs (guards.py):", "", "```", *format_problems(flagged, 5), "```", ""]
    other = [p for p in problems if p["kind"] not in ("shared_patient", "near_duplicate", "class_absent", "input_warning",
                                                 "single_source_class")]
    if other: lines += ["Other problems found while building the table (rows dropped):", "",
                        "```", *format_problems(other, 5), "```", ""]
    return lines


def config_section(config):
    "The configuration as a key/value table."
    if not config: return ["## Configuration", "", "Not recorded.", ""]
    rows = [[k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in config.items()]
    return ["## Configuration", "", *md_table(["key", "value"], rows), ""]


def stage_rows(plan, history_csv):
    """One row per plan stage: what trained, epochs run, its learning rate, and the last epoch's losses and accuracy
    (an ensemble's last member's: each member trains the same plan)."""
    try:
        hist = pd.read_csv(history_csv)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        hist = pd.DataFrame()
    if "member" in hist: hist = hist[hist["member"] == hist["member"].max()]  # an ensemble: its last member's
    rows = []
    for i, stage in enumerate(plan, 1):
        ran = hist[hist["stage"].astype(str) == str(i)] if "stage" in hist else hist.iloc[0:0]
        last = ran.iloc[-1] if len(ran) else {}
        acc = next((k for k in ("accuracy", "accuracy_multi") if k in ran), None)
        rows.append([i, stage["train"], len(ran), stage["lr"], *[fmt(last.get(k)) if len(ran) else "-"
                                                                  for k in ("train_loss", "valid_loss", acc)]])
    return rows


def training_section(config, history_csv):
    "Where the body's weights came from, and each stage of the freeze plan with how it ended."
    if not config or not config.get("plan"): return []
    lines = ["## Starting weights and training stages", "",
             f"Starting weights: {describe_provenance(config.get('start_weights'))}.", ""]
    used = config.get("precision_used")  # precision.Precision.as_dict(): what ran and why
    if used: lines += [f"Precision: {used['name']}{', channels-last' if used['channels_last'] else ''} on "
                       f"{used['device']} (asked: {used['requested']}; {used['reason']}).", ""]
    if (config.get("members") or 1) > 1:
        n, seed = config["members"], config["seed"]
        lines += [f"An ensemble of {n} members (seeds {seed}..{seed + n - 1}, the same splits; their logits averaged): "
                  f"each trained the stages below, shown for the last member; every member's epochs are in "
                  f"history.csv and the curves.", ""]
    header = ["stage", "trains", "epochs run", "learning rate", "train loss", "valid loss", "accuracy"]
    return lines + md_table(header, stage_rows(config["plan"], history_csv)) + [
        "", "`head`: body frozen (feature extraction); `all`: everything trains; a `lo:hi` rate is spread across "
            "the layer groups (discriminative learning rates).", ""]


def with_ci(m, key):
    "A metric with its confidence interval in brackets."
    ci = (m.get("ci") or {}).get(key)
    return fmt(m.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def metrics_section(result):
    "Headline metrics with confidence intervals, per-class tables, notes and thresholds."
    splits = [s for s in ("valid", "test") if s in result]
    multilabel = any("exact_match" in result[s] for s in splits)
    keys = [*HEADLINE, *(["exact_match"] if multilabel else [])]
    lines = ["## Metrics", "", *md_table(["split", "images", *[k.replace("_", " ") for k in keys]],
                                         [[s, result[s]["n"], *[with_ci(result[s], k) for k in keys]] for s in splits]), ""]
    methods = {result[s]["ci"]["method"] for s in splits if result[s].get("ci")}
    lines += [f"In brackets: {m}." for m in methods] + [""]
    if multilabel:
        lines += ["Accuracy is the mean per-label accuracy; exact match the share of images with every label right.", ""]
    for s in splits:
        m = result[s]
        lines += [f"### {s} ({m['n']} images; decision: {m.get('decision', '')})", ""]
        if multilabel:
            cols = ["support", "threshold", "auc", "f1", "accuracy", "sensitivity", "specificity"]
            lines += md_table(["label", *cols], [[c, *[fmt(v[k]) for k in cols]] for c, v in m["per_class"].items()])
        else:
            cols = ["support", "predicted", "precision", "recall", "f1", "auc"]
            lines += md_table(["class", *cols], [[c, *[fmt(v[k]) for k in cols]] for c, v in m["per_class"].items()])
            lines += ["", f"Macro precision {fmt(m.get('macro_precision'))}, "
                          f"macro recall {fmt(m.get('macro_recall'))}.", ""]
            lines += md_table(["disease", "sensitivity", "specificity", "decision"],
                              [[c, fmt(v["sensitivity"]), fmt(v["specificity"]), v["decision"]]
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


def audit_verdict(audit_json):
    "The verdict of an audit.json ({level, text, advice, ...}), None when there is none to read."
    if not Path(audit_json).is_file(): return None
    try:
        return json.loads(Path(audit_json).read_text())["verdict"]
    except (ValueError, KeyError, OSError):
        return None


def audit_section(audit_json):
    "The shortcut audit's verdict (audit.json beside the report, written by `train` or `audit`), with a link."
    verdict = audit_verdict(audit_json)
    if not verdict: return []
    advice = [verdict["advice"], ""] if verdict.get("advice") else []
    return ["## Shortcut audit", "", f"**{verdict['level']}**: {verdict['text']} (details: [audit.md](audit.md))", "", *advice]


def write_report(out, title, result, figures=(), failures=(), table=None, config=None, extra=(), leakage=True):
    "Write `report.md` under `out`: synthetic-data warning, data, configuration, metrics, figures."
    sources = (list(table["source"].unique()) if table is not None and "source" in table
               else [(config or {}).get("source")])
    lines = [f"# {title}", ""]
    warning = synthetic_line(sources)
    if warning: lines += [warning, ""]
    lines += list(extra)
    lines += audit_section(Path(out) / "audit.json")
    if table is not None: lines += data_section(table, leakage)
    lines += training_section(config, Path(out) / "history.csv")
    lines += config_section(config) + metrics_section(result) + calibration.report_lines(result)
    lines += figures_section(figures, failures)
    return write_atomic(Path(out) / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
