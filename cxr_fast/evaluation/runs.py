"""Evaluation: a trained model on the valid/test splits of its run, on other labelled data, and runs compared.

- `evaluate_run(learn, table, run_dir, config)`: what `train` calls after fitting (valid and test splits);
- `evaluate(model_dir, source, root, ...)`: a trained model on another labelled dataset;
- `compare(*run_dirs)`: the runs' configurations and headline metrics side by side.

The metric maths is in metrics.py, the figures and report.md in report.py, calibration (ECE, temperature
scaling, the sensitivity operating point) in calibration.py.
"""
import json
from pathlib import Path

from contextlib import nullcontext

import numpy as np
import pandas as pd
from fastai.callback.core import Callback

from ..core.activations import activate
from . import calibration
from ..data.blocks import test_dl
from .card import evaluation_entry
from ..data.load import load_table, typed_source_options
from ..core.errors import CxrError, DataError
from ..inference.predictor import Predictor
from ..inference.views import TTA_VIEWS, mean_over_views, stack_views
from ..core.jsonio import jsonable, read_json, write_json
from .hospitals import with_interval, within_hospital, within_hospital_lines
from .metrics import N_BOOT, split_metrics, targets_of, tune_thresholds
from ..models.folder import find_model_dir, read_model_json, record_evaluation, write_model_json
from ..training.precision import ChannelsLast
from .plots import dls_batches, read_history
from .report import fmt, draw_figures, md_table, write_report
from ..data.sources import get_source
from ..data.table import absent_classes
from ..data.labels import check_class_map, classes_of, is_multilabel, parse_class_map, positive_index, relabel
from ..core.jsonio import write_atomic

# ---- after a training run ------------------------------------------------------------------

def learner_probs(learn, part, multilabel):
    "Probabilities (N, C) of a fastai learner on a table's rows (the loss's activation; softmax/sigmoid without one)."
    dl = test_dl(learn.dls, part, with_labels=False)
    with (learn.no_bar() if hasattr(learn, "no_bar") else nullcontext()):
        probs, _ = learn.get_preds(dl=dl, with_decoded=False)
    if getattr(learn.loss_func, "activation", None) is None:  # a plain torch loss: these are logits
        probs = activate(probs, multilabel)
    return probs.float().cpu().numpy()


class TTAViews(Callback):
    """Test-time augmentation inside fastai's get_preds: each batch goes in as its TTA views (inference/views.py,
    stacked along the batch) and comes out as the views' mean logits, as Predictor(tta=True) computes them."""
    order = ChannelsLast.order - 1  # before ChannelsLast and autocast (precision.py): the stacked batch gets both

    def before_batch(self):
        x = self.learn.xb[0]
        self.n = x.shape[0]
        self.learn.xb = (stack_views(x), *self.learn.xb[1:])

    def after_pred(self):
        self.learn.pred = mean_over_views(self.learn.pred, self.n)


def learner_logits(learn, part, tta=False):
    "Raw outputs (N, C) of a fastai learner on a table's rows, before any activation (float32); tta: TTAViews."
    dl = test_dl(learn.dls, part, with_labels=False)
    with (learn.no_bar() if hasattr(learn, "no_bar") else nullcontext()):
        logits, _ = learn.get_preds(dl=dl, with_decoded=False, act=lambda x: x, cbs=[TTAViews()] if tta else None)
    return logits.float().cpu().numpy()


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


def run_operating_point(probs, ys, classes, target, default):
    """(binary operating point for a target sensitivity chosen on valid, or None, notes). None, and the default
    threshold kept, when valid has too few positives to estimate it (calibration.min_positives)."""
    if not target or len(classes) != 2: return None, []
    pos = positive_index(classes)
    n_pos, need = int((ys["valid"] == pos).sum()), calibration.min_positives(float(target))
    if n_pos < need:
        return None, [f"{n_pos} {classes[pos]} image(s) in the valid split: an operating point for sensitivity "
                      f"{target} needs at least {need} (with fewer, the lowest-scored one alone sets it); the "
                      f"threshold stays at {default} (a larger --valid-pct, or --target-sensitivity none)"]
    op = calibration.operating_point({s: p[:, pos] for s, p in probs.items()}, {s: y == pos for s, y in ys.items()},
                                     float(target), default=default)
    return op, [f"decision threshold {op['threshold']:.4f} chosen on this split for sensitivity {target}: "
                f"its sensitivity is optimistic"]


def evaluate_run(learn, table, run_dir, config=None, *, threshold=None, n_boot=N_BOOT, seed=0, gallery_k=4,
                 n_gradcam=8):
    """Metrics of a trained learner on the table's valid and test rows, figures and `report.md` in `run_dir`.

    Writes RUN_DIR/metrics.json = {"valid": {...}, "test": {...}, "thresholds": {...}, "calibration": {...},
    "operating_point": {...}} and returns the same dict. With config['calibrate'] (default true) a temperature
    is fitted on valid and every probability is the scaled one; with config['target_sensitivity'] a binary
    model's threshold is the operating point chosen on valid for that sensitivity; with config['tta'] every
    split is scored on the TTA views' mean logits (TTAViews), temperature and thresholds included.
    threshold: binary decision threshold on the disease class (default: config['threshold'] or 0.5)."""
    run_dir = Path(run_dir)
    config = config if config is not None else (read_json(run_dir / "config.json") or {})
    multilabel, classes = is_multilabel(table), learner_classes(learn, table)
    parts = {s: split_rows(table, s) for s in ("valid", "test") if (table["split"] == s).any()}
    if not parts: raise CxrError("the table has no valid or test rows to evaluate")
    tta = bool(config.get("tta", False))
    logits = {s: learner_logits(learn, part, tta) for s, part in parts.items()}
    ys = {s: targets_of(part, classes, multilabel) for s, part in parts.items()}
    probs, calib = calibration.calibrate_splits(logits, ys, classes, multilabel, config.get("calibrate", True))
    raw = {s: calibration.activation(z, multilabel) for s, z in logits.items()}
    threshold = threshold if threshold is not None else (config.get("threshold") or 0.5)
    thresholds, notes = run_thresholds(parts, raw, classes, multilabel, threshold)  # tuned before scaling, then mapped:
    if multilabel and calib.get("temperature"):  # the same decisions whether scaled or not
        thresholds = calibration.temper_thresholds(thresholds, calib["temperature"], classes)
    op, op_notes = (run_operating_point(probs, ys, classes, config.get("target_sensitivity"), threshold)
                    if not multilabel and "valid" in parts else (None, []))
    if op is not None: thresholds = {"positive": op["threshold"]}
    result = {s: split_metrics(parts[s], probs[s], classes, multilabel, thresholds, n_boot, seed) for s in parts}
    for s in parts: result[s]["calibration"] = calibration.split_calibration(calib, s)
    tta_notes = [f"test-time augmentation: the mean logits of {len(TTA_VIEWS)} views (inference.TTA_VIEWS)"] * tta
    result[next(iter(parts))]["notes"] += tta_notes + notes + op_notes  # valid when there is one: where they were chosen
    result["thresholds"] = thresholds
    result["calibration"] = calibration.model_entry(calib)
    if op is not None: result["operating_point"] = op
    result = jsonable(result)
    history = read_history(run_dir / "history.csv")
    figures, failures = draw_figures(run_dir, parts, probs, classes, multilabel, thresholds, result, learn.model,
                                     dls_batches(learn.dls), history, gallery_k, n_gradcam, seed)
    write_json(run_dir / "metrics.json", result)
    extra = [] if history is not None else ["No training history (history.csv) in this run folder: no curves.", ""]
    write_report(run_dir, f"Run report: {run_dir.resolve().name}", result, figures, failures, table, config, extra)
    return result


# ---- a trained model on other data ---------------------------------------------------------

def default_task(source, meta):
    "The task to read other data with: the model's own task when the source has it, else `folders`."
    if source == "table": return None
    tasks = get_source(source).TASKS
    if meta["task"] in tasks: return meta["task"]
    if "folders" in tasks: return "folders"
    raise CxrError(f"source {source} has no task {meta['task']!r} (the model's); pass --task, one of: {', '.join(tasks)}")


def onto_model(table, model_classes, class_map=None):
    """(rows the model can be scored on, their classes, {unknown class: its rows}, mapping):
    data classes renamed by `class_map` ({data class: model class}); others keep their name, and those
    the model does not know are set aside, not guessed."""
    mapping = parse_class_map(class_map) or {}
    data_classes = classes_of(table)
    check_class_map(mapping, data_classes)
    bad = sorted({v for v in mapping.values() if v not in model_classes})
    if bad: raise DataError(f"--classes maps onto {bad}, which the model does not have; its classes are {model_classes}")
    table = relabel(table, mapping)
    if is_multilabel(table):
        labels = [mapping.get(c, c) for c in data_classes]
        shared = [c for c in model_classes if c in labels]
        unknown = {c: table[table[c] == 1] for c in labels if c not in model_classes}
        if not shared:
            raise DataError(f"none of this data's labels {labels} is a model label {model_classes}; map them with --classes")
        return table.reset_index(drop=True), shared, unknown, mapping
    known = table["label"].isin(model_classes)
    unknown = {c: table[(table["label"] == c).to_numpy()].reset_index(drop=True) for c in dict.fromkeys(table["label"][~known])}
    part = table[known.to_numpy()].reset_index(drop=True)
    if part.empty: raise DataError(f"no image of this data has a class the model knows ({model_classes}); "
                                   f"map them with --classes 'DATA_CLASS->MODEL_CLASS,...'")
    return part, list(model_classes), unknown, mapping


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
             bs=32, gallery_k=4, n_gradcam=8, precision="auto", **source_options):
    """Evaluate a trained model (model dir or run dir) on another labelled dataset; write metrics.json, figures
    and report.md under `out` (default: RUN_DIR/eval-<source>-<root name>) and return the metrics dict.

    classes: map this data's class names onto the model's, 'COVID-19->Covid-19,Normal->No_findings'; data classes
    the model does not know are counted in the result's `unknown_classes`, not scored.
    split: 'all' (default) or one of the source's own splits (train/valid/test) to use."""
    source_options = typed_source_options(source, source_options)
    mdir = find_model_dir(model_dir)
    predictor = Predictor.from_dir(mdir, precision=precision)
    meta = predictor.meta
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
    probs_of = lambda rows: predictor.predict_proba(rows["path"].astype(str).tolist(), batch_size=bs)[0].astype(float)  # noqa: E731
    # `predictor` applies the model's temperature (model.json `calibration`): these are the scaled probabilities
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
    y = targets_of(part, eval_classes, multilabel)
    result["test"]["calibration"], result["calibration"] = calibration.external_calibration(
        probs, y, eval_classes, multilabel, meta.get("calibration"))
    op = meta.get("operating_point")
    if op and not multilabel and len(eval_classes) == 2:
        pos = positive_index(eval_classes)
        result["operating_point"] = {**{k: op[k] for k in ("target_sensitivity", "threshold", "default_threshold")},
                                     "chosen_on": "the valid split of the training data",
                                     "test": calibration.rates_at(probs[:, pos], y == pos, op["threshold"]),
                                     "at_default": {"test": calibration.rates_at(probs[:, pos], y == pos,
                                                                                 op["default_threshold"])}}
    result = jsonable(result)
    config = {"model_dir": str(mdir), "arch": meta["arch"], "model_task": meta["task"], "source": source, "root": str(root),
              "task": table.attrs.get("task"), "classes": classes, "split": split, **source_options}
    figures, failures = draw_figures(out, {"test": part}, {"test": probs}, eval_classes, multilabel, thresholds, result,
                                     predictor.model if index == list(range(len(model_classes))) else None,
                                     predictor.gradcam_batches, None, gallery_k, n_gradcam, seed)
    write_json(out / "metrics.json", result)
    write_json(out / "config.json", config)
    extra = evaluation_extra(source, root, mapping, result["unknown_classes"], result["images_not_predicted"],
                             result["images_in_training_table"])
    write_report(out, f"Evaluation of {mdir} on {source}", result, figures, failures, part, config, extra, leakage=False)
    result["card"] = str(record_evaluation(mdir, evaluation_entry(result, config, out)))  # MODEL_CARD.md gets a row
    result["out"] = str(out)
    return result


# ---- the within-hospital set ---------------------------------------------------------------

REPORT_MARK = "<!-- within-hospital -->"  # where a run's report.md holds the section (replaced when measured again)


def record_within_hospital(run_dir, root, n_boot=N_BOOT, seed=0):
    """Score a run's model on the within-hospital set at `root` (evaluation only): RUN_DIR/within_hospital.json, a
    section at the top of report.md (after its title) and in the model card (model.json `within_hospital`)."""
    run_dir, model_dir = Path(run_dir), find_model_dir(run_dir)
    result = within_hospital(Predictor.from_dir(model_dir), root, n_boot, seed)
    write_json(run_dir / "within_hospital.json", result)
    write_model_json(model_dir, {**read_model_json(model_dir), "within_hospital": result})
    report = run_dir / "report.md"
    if report.is_file():
        text = report.read_text(encoding="utf-8").split(REPORT_MARK)
        body = text[0] if len(text) == 1 else text[0] + text[2]
        title, _, rest = body.partition("\n")
        section = "\n".join([REPORT_MARK, *within_hospital_lines(result), REPORT_MARK])
        write_atomic(report, lambda p: p.write_text(f"{title}\n\n{section}\n{rest.lstrip(chr(10))}", encoding="utf-8"))
    print(f"within-hospital COVID-19 vs Normal AUROC {with_interval(result)} on {result['n_pos']} / {result['n_neg']} "
          f"images of {root}; normals called COVID-19: {result['normals_called_covid']:.3f}")
    return result


# ---- comparing runs ------------------------------------------------------------------------

IGNORED_CONFIG_KEYS = {"out", "run_dir", "resume", "model_dir"}
COMPARE_METRICS = ("accuracy", "macro_f1", "auc")


def is_run_folder(folder):
    "True for a folder `train` (config.json, from its start) or `evaluate` (metrics.json) wrote into."
    return (Path(folder) / "metrics.json").is_file() or (Path(folder) / "config.json").is_file()


def runs_in(folder):
    """The run folders `folder` stands for: itself when it is one, else the run folders directly inside it (sorted;
    a recipe's or a tune trial's folder); [] when there are none."""
    folder = Path(folder)
    if is_run_folder(folder): return [folder]
    return sorted(s for s in folder.iterdir() if s.is_dir() and is_run_folder(s)) if folder.is_dir() else []


def run_folders(run_dirs):
    "The run folders named (a folder holding runs stands for each of them), each with metrics.json or config.json."
    found = []
    for d in map(Path, run_dirs):
        runs = runs_in(d)
        if not runs: raise CxrError(f"{d} is not a run folder (no metrics.json or config.json in it)")
        found += runs
    if not found: raise CxrError("name at least one run folder to compare")
    return found


def config_cell(v):
    "A configuration value as a comparison table shows it: lists and dicts as their JSON text."
    return json.dumps(jsonable(v)) if isinstance(v, (dict, list, tuple)) else v


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
    differ = [k for k in keys if len({json.dumps(jsonable(c.get(k))) for c in configs}) > 1]
    df = pd.DataFrame(rows)
    for k in reversed(differ): df.insert(3, k, [config_cell(c.get(k)) for c in configs])
    metric_cols = [c for c in df.columns if c.startswith(("valid_", "test_"))]
    df[metric_cols] = df[metric_cols].astype(float)
    if out: write_atomic(out, lambda p: p.write_text(compare_markdown(df) + "\n"))
    return df


def compare_markdown(df):
    "The comparison as a markdown table (metrics to 3 decimals, n/a where missing)."
    cells = [[fmt(v) if isinstance(v, float) else ("n/a" if v is None else str(v)) for v in r]
             for r in df.itertuples(index=False)]
    return "\n".join(md_table(list(df.columns), cells))
