"""What each shortcut mitigation costs in-source and buys across sources (`make bench-shortcuts`).

For an experiment (the pretrained or the from-scratch DarkCovidNet recipe) and a mitigation (MITIGATIONS), per seed:
- in-source: trained on DarkCovidNet 3-class with 20% of its patients held out as test (valid 10%), test accuracy
  and Covid-19 AUROC;
- cross-source, the same model on CoronaHack (children, another hospital): Covid-19 vs Normal AUROC over
  CoronaHack's COVID-19 and Normal images, the share of CoronaHack TEST images (Normal/Pneumonia, no COVID-19)
  called Covid-19, and Pneumonia vs Normal AUROC there (p(Pneumonia) against p(No_findings)).
  Every CoronaHack COVID-19 image is a copy of a DarkCovidNet Covid-19 image (the same Cohen et al. collection: 52
  of 52 within NEAR_DUPLICATE_BITS of dhash), so a DarkCovidNet model has trained on most of them. The honest
  figures (`*_unseen`) use only the copies of images in the run's held-out test split (about 10 per seed): Covid-19
  vs Normal AUROC and Covid-19 recall on COVID-19 images the model never saw; the all-image AUROC is kept for the
  record, labelled as including training images;

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

from cxr_fast.data.load import load_table  # noqa: E402
from cxr_fast.inference.predictor import load_model  # noqa: E402
from cxr_fast.core.jsonio import read_json, write_json  # noqa: E402
from cxr_fast.core.machine import machine_info  # noqa: E402
from cxr_fast.data.images import dhash, load_image  # noqa: E402
from cxr_fast.evaluation.report import fmt, md_table  # noqa: E402
from cxr_fast.data.table import NEAR_DUPLICATE_BITS, hash_distances, hash_rows, read_table  # noqa: E402
from cxr_fast.training.run import train  # noqa: E402

ACQUISITION = dict(resize_method="pad", jpeg_quality="30:95", preprocessing="standardize")
MITIGATIONS = {  # each on top of the recipe's configuration with the mitigations off ("none" turns them off)
    "none": {"resize_method": "squish", "jpeg_quality": None, "preprocessing": "none"},
    "acquisition": ACQUISITION,                       # one acquisition path: pad, JPEG at random quality, intensity
    "border": {"resize_method": "squish", "jpeg_quality": None, "preprocessing": "crop-field"},  # the central field only
    "all": {**ACQUISITION, "preprocessing": "standardize+crop-field"},
}


def experiment_config(name):
    if name == "pretrained": return darkcovidnet_pretrained.fit_config("best", "3class")
    if name == "scratch": return {**darkcovidnet_scratch.BEST, "bf16": None}
    sys.exit(f"--experiments takes pretrained and/or scratch, not {name!r}")


def auroc(y, score):
    y = np.asarray(y, dtype=bool)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def copies(paths, of_paths):
    "For each image of `paths`, whether it is a copy (dhash within NEAR_DUPLICATE_BITS) of one of `of_paths`."
    if not len(of_paths): return np.zeros(len(paths), dtype=bool)
    def rows(ps): return hash_rows([dhash(load_image(p)) for p in ps])
    theirs = rows(of_paths)
    return np.array([(hash_distances(theirs, h) <= NEAR_DUPLICATE_BITS).any() for h in rows(paths)], dtype=bool)


def cross_source(run_dir, hack_root):
    """The DarkCovidNet model of `run_dir` on CoronaHack: Covid-19 vs Normal AUROC and Covid-19 recall (on all
    CoronaHack COVID-19 images, and on the unseen ones: copies of the run's test images), Covid-19 calls on TEST,
    Pneumonia vs Normal AUROC."""
    model_dir = Path(run_dir) / "model"
    ours = read_table(Path(run_dir) / "table.csv")
    held_out = ours.loc[(ours["split"] == "test") & (ours["label"] == "Covid-19"), "path"].tolist()
    hack = load_table("coronahack", hack_root, "3class", valid_pct=0.0, dedup="off", check=False)
    hack = hack[hack["label"].isin(["COVID-19", "Normal"]) | (hack["split"] == "test")]  # the rows the figures use
    preds = load_model(model_dir).predict(hack["path"].tolist()).set_index("path")
    readable = preds.index[preds["error"].fillna("").astype(str) == ""]  # an error row names why; others have ""
    hack = hack[hack["path"].isin(readable)]
    p = preds.loc[hack["path"]]
    covid_normal = hack["label"].isin(["COVID-19", "Normal"]).to_numpy()
    covid = (hack["label"] == "COVID-19").to_numpy()
    unseen = covid.copy()
    unseen[covid] = copies(hack["path"][covid].tolist(), held_out)
    unseen_normal = unseen | (hack["label"] == "Normal").to_numpy()
    test = (hack["split"] == "test").to_numpy()
    pn = p["p_Pneumonia"] / (p["p_Pneumonia"] + p["p_No_findings"])
    return {"covid_vs_normal_auroc_unseen": auroc(unseen[unseen_normal], p["p_Covid-19"][unseen_normal]),
            "covid_recall_unseen": float((p["pred"][unseen] == "Covid-19").mean()), "n_covid_unseen": int(unseen.sum()),
            "covid_vs_normal_auroc": auroc(hack["label"][covid_normal] == "COVID-19", p["p_Covid-19"][covid_normal]),
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
    return {"in_source": in_source(metrics), "cross_source": cross_source(run_dir, a.hack),
            "train_minutes": minutes, "config": {k: str(v) for k, v in MITIGATIONS[mitigation].items()},
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


COLUMNS = {  # column: (figure of one run's result, what the column says)
    "in-source 3-class acc": (lambda r: r["in_source"]["accuracy"]),
    "in-source Covid-19 AUROC": (lambda r: r["in_source"]["covid_auroc"]),
    "in-source Covid-19 recall": (lambda r: r["in_source"]["covid_recall"]),
    "CoronaHack unseen Covid-19 vs Normal AUROC": (lambda r: r["cross_source"].get("covid_vs_normal_auroc_unseen")),
    "CoronaHack unseen Covid-19 recall": (lambda r: r["cross_source"].get("covid_recall_unseen")),
    "CoronaHack TEST (no COVID-19) called Covid-19": (lambda r: r["cross_source"]["test_called_covid"]),
    "CoronaHack TEST Pneumonia vs Normal AUROC": (lambda r: r["cross_source"]["test_pneumonia_vs_normal_auroc"]),
    "CoronaHack all Covid-19 vs Normal AUROC (incl. training copies)": (lambda r: r["cross_source"]["covid_vs_normal_auroc"]),
}


def mean_rows(results):
    "One row per experiment / mitigation: the mean of each column over its seeds, and the seeds."
    groups = {}
    for key, r in results.items():
        experiment, mitigation, seed = key.split(" / ")
        groups.setdefault(f"{experiment} / {mitigation}", []).append((seed, r))
    rows = []
    for name, runs in groups.items():
        values = [[f(r) for _, r in runs] for f in COLUMNS.values()]
        rows.append([name, ",".join(s for s, _ in runs),
                     *[fmt(float(np.mean([v for v in vs if v is not None]))) if any(v is not None for v in vs) else "-"
                       for vs in values]])
    return rows


def markdown(results, machine):
    rows = [[key, *[fmt(f(r)) for f in COLUMNS.values()], str(r["train_minutes"])] for key, r in results.items()]
    lines = ["# Shortcut mitigations: in-source cost, cross-source effect", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, torch {machine.get('torch')}.",
             "CoronaHack's 52 COVID-19 images are copies of DarkCovidNet Covid-19 images: `unseen` columns use only "
             "the copies of each run's held-out test images (about 10 per seed); the last column includes images the "
             "model trained on.",
             "Mitigations: " + "; ".join(f"`{k}` = {v}" for k, v in MITIGATIONS.items()) + ".", "",
             "## Means over seeds", "", *md_table(["experiment / mitigation", "seeds", *COLUMNS], mean_rows(results)), "",
             "## Each run", "", *md_table(["experiment / mitigation / seed", *COLUMNS, "train min"], rows), ""]
    return "\n".join(lines)


def main():
    p = data_arguments("shortcuts", "shortcuts.json")
    p.add_argument("--experiments", default="pretrained")
    p.add_argument("--mitigations", default="none,all")
    p.add_argument("--seeds", default="42")
    p.add_argument("--rescore", action="store_true", help="recompute the cross-source figures of runs already trained")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the JSON")
    a = p.parse_args()
    saved = read_json(a.out) or {}
    results, machine = saved.get("results", {}), machine_info()
    if a.report:
        Path(a.out).with_suffix(".md").write_text(markdown(results, saved.get("machine", machine)))
        return
    if a.rescore:
        for key, r in results.items():
            r["cross_source"] = cross_source(Path(a.runs) / key.replace(" / ", "-"), a.hack)
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
