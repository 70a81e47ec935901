"""`make bench-accuracy`: patient-grouped 5-fold cross-validation on DarkCovidNet, from scratch and pretrained.

The protocol of Ozturk et al. 2020 (DarkCovidNet: 87.02% 3-class, 98.08% binary, 5-fold CV, from scratch),
with folds grouped by patient (NIH file names carry the patient id). Inside each training fold a
validation split (by patient) picks the best epoch; the held-out fold is touched once, for the test metrics.
An experiment is a recipe's configuration: `scratch` (recipes/darkcovidnet_scratch.py) or
`pretrained:VARIANT` (recipes/darkcovidnet_pretrained.py: best, fine_tune, head, gradual). Results of the
experiments already in --out are kept, so experiments can be measured one after another.

    python bench/bench_accuracy.py --experiments scratch,pretrained:best [--tasks 3class,binary] [--folds 5]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

HERE = Path(__file__).resolve().parent
from cxr_fast.apps.recipes import recipe_module  # noqa: E402

darkcovidnet_pretrained = recipe_module("darkcovidnet-pretrained")  # the recipes' configurations are what we measure
darkcovidnet_scratch = recipe_module("darkcovidnet-scratch")

from cxr_fast.data.table import assign_splits, build_table
from cxr_fast.core.machine import machine_info
from cxr_fast.training.run import train

PAPER = {"3class": 0.8702, "binary": 0.9808}


FOLDS_BY = ("patient", "image")  # image: the paper's protocol, a patient's images may sit on both sides


def fold_tables(table, folds, seed, by="patient"):
    """One table per fold: the fold is `test`, the rest train with 10% of its patients as `valid`.
    by: patient (folds grouped by patient) or image (stratified by class only, as Ozturk et al.)."""
    if by not in FOLDS_BY: raise ValueError(f"folds by {by!r}: one of {FOLDS_BY}")
    groups = table["patient_id"] if by == "patient" else np.arange(len(table))
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(sgkf.split(np.zeros(len(table)), table["label"], groups=groups)):
        t = table.copy()
        t["split"] = "train"
        t.loc[t.index[test_idx], "split"] = "test"
        t = assign_splits(t, valid_pct=0.1, seed=seed + k)
        t.attrs = dict(table.attrs, split_method=f"{folds}-fold CV by {by}, fold {k}, valid 10% of train patients")
        yield k, t


SEED = 42  # the folds (and each fold's training seed, SEED + fold) of every row unless --seed says otherwise


def experiment_key(name, overrides, by="patient", seed=SEED):
    """Where an experiment's results are kept: its name, plus the --set overrides, the folds and the seed when not the
    defaults (another --seed is a repetition of the CV with other folds, kept beside the first)."""
    sets = "".join(f" --set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(overrides.items()))
    return name + sets + ("" if by == "patient" else f" --folds-by {by}") + ("" if seed == SEED else f" --seed {seed}")


def covid_sensitivity(test_metrics):
    per = test_metrics.get("per_class", {})
    entry = per.get("Covid-19") or {}
    return entry.get("recall")


def experiment_config(name, task, overrides):
    "train() keywords of an experiment ('scratch' or 'pretrained:VARIANT') for a task, with --set overrides."
    if name == "scratch":
        r = darkcovidnet_scratch
        return {**r.BEST, **r.TASK_OVERRIDES.get(task, {}), "bf16": None, **overrides}  # precision: auto
    recipe, _, variant = name.partition(":")
    if recipe != "pretrained": sys.exit(f"unknown experiment {name!r}: scratch or pretrained:VARIANT")
    one_model = darkcovidnet_pretrained.ONE_MODEL  # a key keeps meaning what it measured; --set members=3: as shipped
    return darkcovidnet_pretrained.fit_config(variant or "best", task, **{**one_model, **overrides})


def fold_row(k, metrics, train_s, curve=None):
    """One fold's test results: at the model's decision, and at argmax / 0.5 (the paper's rule) when they differ;
    an ensemble's accuracy by its size (members_curve)."""
    test = metrics["test"]
    row = {"fold": k, "accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
           "macro_f1": test["macro_f1"], "covid_sensitivity": covid_sensitivity(test), "n_test": test["n"],
           "train_s": round(train_s, 1), "decision": test.get("decision")}
    at_default = ((metrics.get("operating_point") or {}).get("at_default") or {}).get("test")
    if at_default:  # binary with an operating point: accuracy at the default 0.5 threshold as well
        n_pos, n_neg = at_default["n_positive"], at_default["n_negative"]
        row["accuracy_at_0.5"] = (at_default["sensitivity"] * n_pos + at_default["specificity"] * n_neg) / (n_pos + n_neg)
        row["covid_sensitivity_at_0.5"] = at_default["sensitivity"]
    if curve: row["members_curve"] = curve
    return row


def members_curve(run):
    """An ensemble run's test accuracy from its first k members' mean logits, k = 1..N (argmax of predict's outputs;
    no retraining): how accuracy grows with the ensemble's size. None for a single model."""
    from cxr_fast.inference.predictor import load_model
    from cxr_fast.models.ensemble import Ensemble
    predictor = load_model(run / "model")
    members = getattr(predictor.model, "members", None)
    if members is None: return None
    table = pd.read_csv(run / "table.csv")
    test = table[table["split"] == "test"]
    truth = test["label"].map(predictor.classes.index).to_numpy()
    curve = []
    for k in range(1, len(members) + 1):
        predictor.model = Ensemble(list(members)[:k])  # the first k members, as `predict` runs an ensemble
        probs, _ = predictor.predict_proba(list(test["path"]))
        read = ~np.isnan(probs).any(axis=1)  # an unreadable file is left out, not counted wrong
        curve.append(round(float(np.mean(probs[read].argmax(axis=1) == truth[read])), 4))
    return curve


def collect_task(task, out_dir, folds):
    "Rows of the folds already trained under out_dir (an interrupted benchmark); time: config.json to metrics.json."
    rows = []
    for k in range(folds):
        run = out_dir / f"{task}-fold{k}"
        if not (run / "metrics.json").is_file(): continue
        train_s = (run / "metrics.json").stat().st_mtime - (run / "config.json").stat().st_mtime
        rows.append(fold_row(k, json.loads((run / "metrics.json").read_text()), train_s, members_curve(run)))
    return rows


def run_task(task, data, out_dir, args, config):
    table = build_table("folders", data, "folders", valid_pct=0, classes=darkcovidnet_scratch.TASK_CLASSES[task],
                        dedup="off")
    rows = []
    for k, fold in fold_tables(table, args.folds, args.seed, args.folds_by):
        if args.only_fold is not None and k != args.only_fold: continue
        t0 = time.time()
        res = train(table=fold, out=out_dir / f"{task}-fold{k}", overwrite=True, seed=args.seed + k, **config)
        rows.append(fold_row(k, res, time.time() - t0, members_curve(out_dir / f"{task}-fold{k}")))
        print(json.dumps({"task": task, **rows[-1]}), flush=True)
    return summarize_folds(rows, task)


def summarize_folds(rows, task):
    "Mean, spread and COVID-19 sensitivity over the folds."
    at_half = [r["accuracy_at_0.5"] for r in rows if "accuracy_at_0.5" in r]
    extra = {"accuracy_at_0.5_mean": float(np.mean(at_half))} if len(at_half) == len(rows) else {}
    curves = [r["members_curve"] for r in rows if "members_curve" in r]
    if curves and len(curves) == len(rows): extra["members_curve_mean"] = [round(a, 4) for a in np.mean(curves, axis=0).tolist()]
    acc = np.array([r["accuracy"] for r in rows])
    sens = np.array([r["covid_sensitivity"] for r in rows if r["covid_sensitivity"] is not None])
    return {"folds": rows, "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
            "covid_sensitivity_mean": float(sens.mean()) if len(sens) else None,
            "train_minutes_total": round(sum(r["train_s"] for r in rows) / 60, 1), "paper": PAPER[task], **extra}


def markdown(results):
    lines = ["# DarkCovidNet 5-fold CV (patient-grouped)", "", f"Data: {results['data']}.", "",
             "| experiment | task | folds | accuracy mean ± sd | min-max | COVID-19 sensitivity | paper (scratch) "
             "| training time | machine |", "|---|---|---|---|---|---|---|---|---|"]
    for name, exp in results["experiments"].items():
        for task, r in exp["tasks"].items():
            sens = f"{r['covid_sensitivity_mean']:.3f}" if r["covid_sensitivity_mean"] is not None else "-"
            at_half = f" (at 0.5: {r['accuracy_at_0.5_mean']:.4f})" if "accuracy_at_0.5_mean" in r else ""
            lines.append(f"| {name} | {task} | {len(r['folds'])} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}{at_half} "
                         f"| {r['accuracy_min']:.4f}-{r['accuracy_max']:.4f} | {sens} | {r['paper']:.4f} "
                         f"| {r['train_minutes_total']} min | {exp['machine_summary']} |")
    curves = [(name, task, r["members_curve_mean"]) for name, exp in results["experiments"].items()
              for task, r in exp["tasks"].items() if "members_curve_mean" in r]
    if curves:
        lines += ["", "Ensembles by size: test accuracy (mean over the folds) of the first k members' mean logits, "
                  "from the same trained members (argmax of predict's outputs, fp32 on a CPU):", ""]
        lines += [f"- {name} ({task}): " + ", ".join(f"{k + 1}: {a:.4f}" for k, a in enumerate(c)) for name, task, c in curves]
    lines += ["", "Configurations:", ""]
    lines += [f"- `{name}`: `{json.dumps(exp['config'], default=str)}`" for name, exp in results["experiments"].items()]
    lines += ["", "Per fold:", "", "| experiment | task | fold | accuracy | balanced acc | macro F1 | COVID-19 sens | n test "
              "| train s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, exp in results["experiments"].items():
        for task, r in exp["tasks"].items():
            for f in r["folds"]:
                sens = f"{f['covid_sensitivity']:.3f}" if f["covid_sensitivity"] is not None else "-"
                lines.append(f"| {name} | {task} | {f['fold']} | {f['accuracy']:.4f} | {f['balanced_accuracy']:.4f} "
                             f"| {f['macro_f1']:.4f} | {sens} | {f['n_test']} | {f['train_s']} |")
    return "\n".join(lines) + "\n"


def machine_summary(record):
    "One line: CPU (or GPU), cores, torch threads."
    cpu = record.get("cpu") or {}
    name = record.get("gpu") or cpu.get("model") or record.get("cpu_model") or "?"
    return f"{name}, {record.get('cores', cpu.get('cores', '?'))} cores"


def load_results(path, data):
    "The results already measured in `path` (older files: one from-scratch experiment), or a new record."
    if not Path(path).is_file(): return {"data": data, "experiments": {}}
    old = json.loads(Path(path).read_text())
    if "experiments" in old: return old
    scratch = {"config": {**old["config"], "task_overrides": old.get("task_overrides")}, "tasks": old["tasks"],
               "machine": {"note": old.get("machine")}, "machine_summary": f"{old.get('machine')} (earlier machine)"}
    return {"data": old.get("data", data), "experiments": {"scratch": scratch}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "darkcovidnet"))
    p.add_argument("--out", default=str(HERE / "accuracy.json"))
    p.add_argument("--runs", default=str(HERE / "tmp" / "cv"))
    p.add_argument("--tasks", default="3class,binary")
    p.add_argument("--experiments", default="pretrained:best", help="scratch and/or pretrained:VARIANT, comma-separated")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-fold", type=int, default=None)
    p.add_argument("--seed", type=int, default=SEED, help="the folds' and the trainings' seed: another one repeats the "
                   "CV with other folds (kept under its own key)")
    p.add_argument("--set", action="append", default=[],
                   help="override a config key, e.g. --set epochs=20 (kept under its own key in --out)")
    p.add_argument("--folds-by", choices=FOLDS_BY, default="patient",
                   help="patient (the default) or image: the paper's protocol, for comparison only")
    p.add_argument("--collect", action="store_true", help="summarise the folds already trained under --runs, train none")
    a = p.parse_args()
    if not Path(a.data).is_dir(): sys.exit(f"DarkCovidNet not found at {a.data}; give --data")
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = json_or_text(value)
    results = load_results(a.out, a.data)
    for name in a.experiments.split(","):
        key = experiment_key(name, overrides, a.folds_by, a.seed)
        exp = results["experiments"].setdefault(key, {"tasks": {}})
        exp.update(machine=machine_info(), config={t: experiment_config(name, t, overrides) for t in a.tasks.split(",")})
        exp["machine_summary"] = machine_summary(exp["machine"])
        for task in a.tasks.split(","):
            runs = Path(a.runs) / "".join(c if c.isalnum() or c in "._=-" else "-" for c in key)
            exp["tasks"][task] = (summarize_folds(collect_task(task, runs, a.folds), task) if a.collect
                                  else run_task(task, Path(a.data), runs, a, exp["config"][task]))
            write_results(a.out, results)  # after every task: an interrupted benchmark keeps what it measured
    print(markdown(results))


def json_or_text(value):
    "A --set value: JSON when it parses (2e-3, true, [..]), else the text itself (fp32, cxr)."
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def write_results(path, results):
    "accuracy.json and accuracy.md, atomically."
    from cxr_fast.core.jsonio import write_atomic
    write_atomic(Path(path), lambda p: p.write_text(json.dumps(results, indent=1, default=str)))
    write_atomic(Path(path).with_suffix(".md"), lambda p: p.write_text(markdown(results)))


if __name__ == "__main__":
    main()
