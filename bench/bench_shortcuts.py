"""What each shortcut mitigation costs in-source and buys across sources (`make bench-shortcuts`).

For an experiment (the pretrained or the from-scratch DarkCovidNet recipe) and a mitigation (MITIGATIONS), per seed:
- in-source: trained on DarkCovidNet 3-class with 20% of its patients held out as test (valid 10%), test accuracy
  and Covid-19 AUROC;
- cross-source, the same model on CoronaHack (children, another hospital): Covid-19 vs Normal AUROC over
  CoronaHack's COVID-19 and Normal images, the share of CoronaHack TEST images (Normal/Pneumonia, no COVID-19)
  called Covid-19, and Pneumonia vs Normal AUROC there (p(Pneumonia) against p(No_findings));

    python bench/bench_shortcuts.py --experiments pretrained --mitigations none,all --seeds 42,1,2

Resumable: a (experiment, mitigation, seed) already in --out is not run again. Results: --out (JSON) and the
markdown table beside it, with the machine.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "recipes"))
import darkcovidnet_pretrained  # noqa: E402
import darkcovidnet_scratch  # noqa: E402
from bench_cross_source import data_arguments  # noqa: E402

from cxr_fast.data.load import load_table
from cxr_fast.inference.predictor import load_model
from cxr_fast.core.jsonio import read_json, write_json
from cxr_fast.core.machine import machine_info
from cxr_fast.evaluation.report import fmt, md_table
from cxr_fast.training.run import train

ACQUISITION = dict(resize_method="pad", jpeg_quality="30:95", preprocessing="standardize")
MITIGATIONS = {
    "none": {},
    "acquisition": ACQUISITION,                       # one acquisition path: pad, JPEG at random quality, intensity
    "border": {"preprocessing": "crop-field"},        # the central field only
    "all": {**ACQUISITION, "preprocessing": "standardize+crop-field"},
}


def experiment_config(name):
    if name == "pretrained": return darkcovidnet_pretrained.fit_config("best", "3class")
    if name == "scratch": return {**darkcovidnet_scratch.BEST, "bf16": None}
    sys.exit(f"--experiments takes pretrained and/or scratch, not {name!r}")


def auroc(y, score):
    y = np.asarray(y, dtype=bool)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def cross_source(model_dir, hack_root):
    "The DarkCovidNet model on CoronaHack: Covid-19 vs Normal AUROC, Covid-19 calls on TEST, Pneumonia vs Normal AUROC."
    hack = load_table("coronahack", hack_root, "3class", valid_pct=0.0, dedup="off", check=False)
    preds = load_model(model_dir).predict(hack["path"].tolist()).set_index("path")
    readable = preds.index[preds["error"].fillna("").astype(str) == ""]  # an error row names why; others have ""
    hack = hack[hack["path"].isin(readable)]
    p = preds.loc[hack["path"]]
    covid_normal = hack["label"].isin(["COVID-19", "Normal"]).to_numpy()
    test = (hack["split"] == "test").to_numpy()
    pn = p["p_Pneumonia"] / (p["p_Pneumonia"] + p["p_No_findings"])
    return {"covid_vs_normal_auroc": auroc(hack["label"][covid_normal] == "COVID-19", p["p_Covid-19"][covid_normal]),
            "n_covid": int((hack["label"] == "COVID-19").sum()), "n_normal": int((hack["label"] == "Normal").sum()),
            "test_called_covid": float((p["pred"][test] == "Covid-19").mean()),
            "test_pneumonia_vs_normal_auroc": auroc(hack["label"][test] == "Pneumonia", pn[test]), "n_test": int(test.sum())}


def in_source(metrics):
    test = metrics["test"]
    return {"accuracy": test["accuracy"], "covid_auroc": test["per_class"]["Covid-19"]["auc"],
            "covid_recall": test["per_class"]["Covid-19"]["recall"], "n": test["n"]}


def run_one(a, experiment, mitigation, seed):
    config = {**experiment_config(experiment), **MITIGATIONS[mitigation], "seed": seed, "overwrite": True, "audit": False}
    run_dir = Path(a.runs) / f"{experiment}-{mitigation}-{seed}"
    start = time.time()
    metrics = train(source="folders", root=a.dark, task="folders", classes=darkcovidnet_pretrained.TASK_CLASSES["3class"],
                    valid_pct=0.1, test_pct=0.2, out=run_dir, **config)
    minutes = round((time.time() - start) / 60, 1)
    return {"in_source": in_source(metrics), "cross_source": cross_source(run_dir / "model", a.hack),
            "train_minutes": minutes, "config": {k: str(v) for k, v in MITIGATIONS[mitigation].items()},
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(results, machine):
    rows = []
    for key, r in results.items():
        i, c = r["in_source"], r["cross_source"]
        rows.append([key, fmt(i["accuracy"]), fmt(i["covid_auroc"]), fmt(i["covid_recall"]), fmt(c["covid_vs_normal_auroc"]),
                     fmt(c["test_called_covid"]), fmt(c["test_pneumonia_vs_normal_auroc"]), str(r["train_minutes"])])
    head = ["experiment / mitigation / seed", "in-source 3-class acc", "in-source Covid-19 AUROC", "Covid-19 recall",
            "CoronaHack Covid-19 vs Normal AUROC", "CoronaHack TEST called Covid-19", "CoronaHack TEST Pneumonia vs Normal AUROC",
            "train min"]
    lines = ["# Shortcut mitigations: in-source cost, cross-source effect", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, torch {machine.get('torch')}.",
             "Mitigations: " + "; ".join(f"`{k}` = {v or 'nothing'}" for k, v in MITIGATIONS.items()) + ".", "",
             *md_table(head, rows), ""]
    return "\n".join(lines)


def main():
    p = data_arguments("shortcuts", "shortcuts.json")
    p.add_argument("--experiments", default="pretrained")
    p.add_argument("--mitigations", default="none,all")
    p.add_argument("--seeds", default="42")
    p.add_argument("--rescore", action="store_true", help="recompute the cross-source figures of runs already trained")
    a = p.parse_args()
    saved = read_json(a.out) or {}
    results, machine = saved.get("results", {}), machine_info()
    if a.rescore:
        for key, r in results.items():
            r["cross_source"] = cross_source(Path(a.runs) / key.replace(" / ", "-") / "model", a.hack)
        write_json(a.out, {"results": results, "machine": machine})
        Path(a.out).with_suffix(".md").write_text(markdown(results, machine))
        return
    for experiment in a.experiments.split(","):
        for mitigation in a.mitigations.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                key = f"{experiment} / {mitigation} / {seed}"
                if key in results: continue  # resumable: measured already
                results[key] = {**run_one(a, experiment, mitigation, seed), "machine": machine.get("cpu_model")}
                write_json(a.out, {"results": results, "machine": machine})
                Path(a.out).with_suffix(".md").write_text(markdown(results, machine))
                print(key, json.dumps(results[key]), flush=True)


if __name__ == "__main__":
    main()
