"""Cross-source generalisation: models trained on one source, tested on the other, and on both mixed.

DarkCovidNet's Normal/Pneumonia images are adult NIH X-rays; CoronaHack's are pediatric X-rays from
Guangzhou. A model that learned the disease should transfer; one that learned the source will not.

    python bench/bench_cross_source.py [--experiment scratch|pretrained] [--parts dark,hack,mixed]

`scratch` is recipes/darkcovidnet_scratch.py's configuration (ResNet18 from random weights), `pretrained`
recipes/darkcovidnet_pretrained.py's (EfficientNet-Lite0 from the pip-installed ImageNet weights, head first,
then all layers). Each experiment's results go under its own key of --out; the other experiments' are kept.
"""
import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from cxr_fast.apps.recipes import recipe_module  # noqa: E402

darkcovidnet_pretrained = recipe_module("darkcovidnet-pretrained")  # the recipes' configurations are what we measure
darkcovidnet_scratch = recipe_module("darkcovidnet-scratch")
TASK_CLASSES = darkcovidnet_scratch.TASK_CLASSES

from cxr_fast.data.load import load_table
from cxr_fast.evaluation.runs import evaluate
from cxr_fast.core.jsonio import write_json
from cxr_fast.core.machine import machine_info
from cxr_fast.data.table import write_table
from cxr_fast.training.run import train

DARK_TO_HACK = "Covid-19->COVID-19,No_findings->Normal,Pneumonia->Pneumonia"  # DarkCovidNet names -> CoronaHack's
HACK_TO_DARK = "Normal->No_findings,Pneumonia->Pneumonia,COVID-19->Covid-19"


def headline(m):
    return {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc")}


def timed(fn, **kw):
    t = time.time()
    out = fn(**kw)
    return out, round((time.time() - t) / 60, 1)


def measured_on():
    "When and where one part ran: parts of an experiment kept from earlier runs may come from other machines."
    m = machine_info()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": m.get("cpu_model"),
            "cores": m.get("cores"), "gpu": m.get("gpu"), "torch": m.get("torch")}


def experiment_config(name):
    "train() keywords of an experiment (the recipes' 3-class configurations; precision: auto)."
    if name == "scratch": return {**darkcovidnet_scratch.BEST, "bf16": None}
    if name == "pretrained": return darkcovidnet_pretrained.fit_config("best", "3class")
    sys.exit(f"--experiment must be scratch or pretrained, got {name!r}")


def load_results(path):
    "Earlier results, as {experiment: {...}} (a file from before experiments were named holds `scratch`)."
    if not Path(path).exists(): return {}
    old = json.loads(Path(path).read_text())
    if "experiments" in old: return old["experiments"]
    return {"scratch": old}


def data_arguments(name, results):
    "An argument parser with the shared data (--dark, --hack), the run folders under bench/tmp/NAME and --out."
    p = argparse.ArgumentParser()
    shared = HERE.parents[1] / "shared" / "data"
    p.add_argument("--dark", default=str(shared / "darkcovidnet"))
    p.add_argument("--hack", default=str(shared / "coronahack"))
    p.add_argument("--runs", default=str(HERE / "tmp" / name))
    p.add_argument("--out", default=str(HERE / results))
    return p


def main():
    p = data_arguments("cross", "cross_source.json")
    p.add_argument("--hack-epochs", type=int, default=4)
    p.add_argument("--hack-size", type=int, default=128)
    p.add_argument("--experiment", default="scratch", help="scratch or pretrained (the recipes' configurations)")
    p.add_argument("--parts", default="dark,hack,mixed", help="which of the three parts to run, comma-separated")
    p.add_argument("--preps", default="equalize,none", help="DarkCovidNet models' --preprocessing (part dark)")
    a = p.parse_args()
    best, parts = experiment_config(a.experiment), a.parts.split(",")
    experiments = load_results(a.out)
    res = experiments.setdefault(a.experiment, {})  # parts not run this time keep their earlier results
    res.update(settings=vars(a), best=best, machine=machine_info())  # this run's; each part says its own (measured)
    runs = Path(a.runs) / a.experiment

    def save():  # after every part: an interrupted benchmark keeps what it measured
        write_json(Path(a.out), {"experiments": experiments})
        print(json.dumps(res), flush=True)

    # 1. DarkCovidNet 3-class models (the recipe's configuration), with and without histogram equalisation,
    #    tested on CoronaHack's Kaggle TEST split (Normal vs Pneumonia; the model's Covid-19 answers count as wrong)
    for prep in (a.preps.split(",") if "dark" in parts else []):
        cfg = {**best, "preprocessing": prep}
        r, minutes = timed(train, source="folders", root=a.dark, task="folders", classes=TASK_CLASSES["3class"],
                           valid_pct=0.1, out=runs / f"dark-{prep}", overwrite=True, **cfg)
        ev = evaluate(runs / f"dark-{prep}", "coronahack", a.hack, task="normal-vs-pneumonia", split="test",
                      classes="Normal->No_findings,Pneumonia->Pneumonia", out=runs / f"dark-{prep}" / "on-coronahack")
        res[f"darkcovidnet[{prep}] -> coronahack test"] = {"in_source_valid": headline(r["valid"]),
                                                           "cross_source": headline(ev["test"]), "train_min": minutes,
                                                           "measured": measured_on()}
        save()

    # 2. The reverse: CoronaHack 3-class, tested on all of DarkCovidNet
    hack_cfg = {**best, "size": a.hack_size, "epochs": a.hack_epochs}
    if "plan" in best:  # the pretrained plan with the CoronaHack epochs: head 2, then all layers
        hack_cfg["plan"] = darkcovidnet_pretrained.fit_config("best", "3class", epochs=a.hack_epochs)["plan"]
    if "hack" in parts:
        hack(a, runs, res, hack_cfg)
        save()
    if "mixed" in parts:
        mixed(a, runs, res, hack_cfg)
        save()
    print(json.dumps(res, indent=1))


def hack(a, runs, res, hack_cfg):
    "CoronaHack 3-class, tested on all of DarkCovidNet."
    prep = hack_cfg["preprocessing"]
    r, minutes = timed(train, source="coronahack", root=a.hack, task="3class", valid_pct=0.1,
                       out=runs / f"hack-{prep}", overwrite=True, **hack_cfg)
    ev = evaluate(runs / f"hack-{prep}", "folders", a.dark, task="folders", classes=DARK_TO_HACK,
                  out=runs / f"hack-{prep}" / "on-darkcovidnet")
    res[f"coronahack[{prep}] -> darkcovidnet all"] = {"in_source_test": headline(r["test"]),
                                                     "cross_source": headline(ev["test"]), "train_min": minutes,
                                                     "measured": measured_on()}


def mixed(a, runs, res, hack_cfg):
    "Both sources mixed (one vocabulary), tested on each source's own held-out images."
    both = load_table("coronahack+folders", f"{a.hack},{a.dark}", "3class,folders", valid_pct=0.1, test_pct=0.2,
                      classes=f";{DARK_TO_HACK}")
    r, minutes = timed(train, table=both, out=runs / "mixed", overwrite=True, **hack_cfg)
    per_source = {}
    for src in ("coronahack", "folders"):
        part = both[(both["source"] == src) & (both["split"] == "test")]
        path = write_table(part, runs / "mixed" / f"test-{src}.csv")
        ev = evaluate(runs / "mixed", "table", path, out=runs / "mixed" / f"on-{src}-test")
        per_source[src] = headline(ev["test"])
    res["mixed coronahack+darkcovidnet"] = {"per_source_test": per_source, "train_min": minutes,
                                            "measured": measured_on()}


if __name__ == "__main__":
    main()
