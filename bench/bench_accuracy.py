"""`make bench-accuracy`: patient-grouped 5-fold cross-validation on DarkCovidNet, trained from scratch.

The protocol of Ozturk et al. 2020 (DarkCovidNet: 87.02% 3-class, 98.08% binary, 5-fold CV, from scratch),
with folds grouped by patient (NIH file names carry the patient id). Inside each training fold a
validation split (by patient) picks the best epoch; the held-out fold is touched once, for the test metrics.

    python bench/bench_accuracy.py --out bench/accuracy.json [--tasks 3class,binary] [--folds 5] [--epochs ..]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "recipes"))
from darkcovidnet_scratch import BEST, TASK_CLASSES, TASK_OVERRIDES  # noqa: E402  the recipe's configuration is what we measure

from cxr_fast.table import assign_splits, build_table  # noqa: E402
from cxr_fast.training import train  # noqa: E402

PAPER = {"3class": 0.8702, "binary": 0.9808}


def fold_tables(table, folds, seed):
    "One table per fold: the fold is `test`, the rest train with 10% of its patients as `valid`."
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(sgkf.split(np.zeros(len(table)), table["label"], groups=table["patient_id"])):
        t = table.copy()
        t["split"] = "train"
        t.loc[t.index[test_idx], "split"] = "test"
        t = assign_splits(t, valid_pct=0.1, seed=seed + k)
        t.attrs = dict(table.attrs, split_method=f"patient-grouped 5-fold CV, fold {k}, valid 10% of train patients")
        yield k, t


def covid_sensitivity(test_metrics):
    per = test_metrics.get("per_class", {})
    entry = per.get("Covid-19") or {}
    return entry.get("recall")


def run_task(task, data, out_dir, args, config):
    table = build_table("folders", data, "folders", valid_pct=0, classes=TASK_CLASSES[task], dedup="off")
    rows = []
    for k, fold in fold_tables(table, args.folds, args.seed):
        if args.only_fold is not None and k != args.only_fold: continue
        t0 = time.time()
        res = train(table=fold, out=out_dir / f"{task}-fold{k}", overwrite=True, seed=args.seed + k, **config)
        test = res["test"]
        rows.append({"fold": k, "accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
                     "macro_f1": test["macro_f1"], "covid_sensitivity": covid_sensitivity(test),
                     "n_test": test["n"], "train_s": round(time.time() - t0, 1)})
        print(json.dumps({"task": task, **rows[-1]}), flush=True)
    return summarize_folds(rows, task)


def summarize_folds(rows, task):
    "Mean, spread and COVID-19 sensitivity over the folds."
    acc = np.array([r["accuracy"] for r in rows])
    sens = np.array([r["covid_sensitivity"] for r in rows if r["covid_sensitivity"] is not None])
    return {"folds": rows, "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
            "covid_sensitivity_mean": float(sens.mean()) if len(sens) else None,
            "train_minutes_total": round(sum(r["train_s"] for r in rows) / 60, 1), "paper": PAPER[task]}


def markdown(results):
    lines = ["# DarkCovidNet 5-fold CV (patient-grouped, from scratch)", "",
             f"Data: {results['data']}. Config: `{json.dumps(results['config'])}`; per task: "
             f"`{json.dumps(results.get('task_overrides', {}))}`. Machine: {results['machine']}.", "",
             "| task | accuracy mean ± sd | min-max | COVID-19 sensitivity | paper | training time |", "|---|---|---|---|---|---|"]
    for task, r in results["tasks"].items():
        sens = f"{r['covid_sensitivity_mean']:.3f}" if r["covid_sensitivity_mean"] is not None else "-"
        lines.append(f"| {task} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['accuracy_min']:.4f}-{r['accuracy_max']:.4f} "
                     f"| {sens} | {r['paper']:.4f} | {r['train_minutes_total']} min |")
    lines += ["", "Per fold:", "", "| task | fold | accuracy | balanced acc | macro F1 | COVID-19 sens | n test |", "|---|---|---|---|---|---|---|"]
    for task, r in results["tasks"].items():
        for f in r["folds"]:
            sens = f"{f['covid_sensitivity']:.3f}" if f["covid_sensitivity"] is not None else "-"
            lines.append(f"| {task} | {f['fold']} | {f['accuracy']:.4f} | {f['balanced_accuracy']:.4f} | {f['macro_f1']:.4f} | {sens} | {f['n_test']} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "darkcovidnet"))
    p.add_argument("--out", default=str(HERE / "accuracy.json"))
    p.add_argument("--runs", default=str(HERE / "tmp" / "cv"))
    p.add_argument("--tasks", default="3class,binary")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-fold", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], help="override a config key, e.g. --set epochs=20")
    p.add_argument("--prior", default=None, help="fold results (JSON lines this script printed) of tasks measured earlier")
    a = p.parse_args()
    if not Path(a.data).is_dir(): sys.exit(f"DarkCovidNet not found at {a.data}; give --data")
    config = dict(BEST)
    for item in a.set:
        key, _, value = item.partition("=")
        config[key] = json.loads(value) if value[:1] in "0123456789-[{tfn\"" else value
    import os, platform
    results = {"data": a.data, "config": config, "task_overrides": TASK_OVERRIDES,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "tasks": {}}
    if a.prior:
        prior = [json.loads(line) for line in Path(a.prior).read_text().splitlines() if line.strip()]
        for task in dict.fromkeys(r["task"] for r in prior):
            results["tasks"][task] = summarize_folds([{k: v for k, v in r.items() if k != "task"} for r in prior if r["task"] == task], task)
    for task in a.tasks.split(","):
        results["tasks"][task] = run_task(task, Path(a.data), Path(a.runs), a, {**config, **TASK_OVERRIDES.get(task, {})})
    Path(a.out).write_text(json.dumps(results, indent=1))
    Path(a.out).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
