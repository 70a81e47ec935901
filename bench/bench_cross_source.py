"""Cross-source generalisation: models trained on one source, tested on the other, and on both mixed.

DarkCovidNet's Normal/Pneumonia images are adult NIH X-rays; CoronaHack's are pediatric X-rays from
Guangzhou. A model that learned the disease should transfer; one that learned the source will not.

    python bench/bench_cross_source.py --out bench/cross_source.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "recipes"))
from darkcovidnet_scratch import BEST, TASK_CLASSES  # noqa: E402

from cxr_fast.data import load_table  # noqa: E402
from cxr_fast.evaluation import evaluate  # noqa: E402
from cxr_fast.table import write_table  # noqa: E402
from cxr_fast.training import train  # noqa: E402

DARK_TO_HACK = "Covid-19->COVID-19,No_findings->Normal,Pneumonia->Pneumonia"  # DarkCovidNet names -> CoronaHack's
HACK_TO_DARK = "Normal->No_findings,Pneumonia->Pneumonia,COVID-19->Covid-19"


def headline(m):
    return {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc")}


def timed(fn, **kw):
    t = time.time()
    out = fn(**kw)
    return out, round((time.time() - t) / 60, 1)


def main():
    p = argparse.ArgumentParser()
    shared = HERE.parents[1] / "shared" / "data"
    p.add_argument("--dark", default=str(shared / "darkcovidnet"))
    p.add_argument("--hack", default=str(shared / "coronahack"))
    p.add_argument("--runs", default=str(HERE / "tmp" / "cross"))
    p.add_argument("--out", default=str(HERE / "cross_source.json"))
    p.add_argument("--hack-epochs", type=int, default=4)
    p.add_argument("--hack-size", type=int, default=128)
    a = p.parse_args()
    runs, res = Path(a.runs), {"settings": vars(a), "best": BEST}

    # 1. DarkCovidNet 3-class models (the recipe's configuration), with and without histogram equalisation,
    #    tested on CoronaHack's Kaggle TEST split (Normal vs Pneumonia; the model's Covid-19 answers count as wrong)
    for prep in ("equalize", "none"):
        cfg = {**BEST, "preprocessing": prep}
        r, minutes = timed(train, source="folders", root=a.dark, task="folders", classes=TASK_CLASSES["3class"],
                           valid_pct=0.1, out=runs / f"dark-{prep}", overwrite=True, **cfg)
        ev = evaluate(runs / f"dark-{prep}", "coronahack", a.hack, task="normal-vs-pneumonia", split="test",
                      classes="Normal->No_findings,Pneumonia->Pneumonia", out=runs / f"dark-{prep}" / "on-coronahack")
        res[f"darkcovidnet[{prep}] -> coronahack test"] = {"in_source_valid": headline(r["valid"]),
                                                           "cross_source": headline(ev["test"]), "train_min": minutes}
        print(json.dumps(res), flush=True)

    # 2. The reverse: CoronaHack 3-class, tested on all of DarkCovidNet
    hack_cfg = {**BEST, "size": a.hack_size, "epochs": a.hack_epochs}
    r, minutes = timed(train, source="coronahack", root=a.hack, task="3class", valid_pct=0.1,
                       out=runs / "hack-equalize", overwrite=True, **hack_cfg)
    ev = evaluate(runs / "hack-equalize", "folders", a.dark, task="folders", classes=DARK_TO_HACK,
                  out=runs / "hack-equalize" / "on-darkcovidnet")
    res["coronahack[equalize] -> darkcovidnet all"] = {"in_source_test": headline(r["test"]),
                                                        "cross_source": headline(ev["test"]), "train_min": minutes}
    print(json.dumps(res), flush=True)

    # 3. Both sources mixed (one vocabulary), tested on each source's own held-out images
    both = load_table("coronahack+folders", f"{a.hack},{a.dark}", "3class,folders", valid_pct=0.1, test_pct=0.2,
                      classes=f";{DARK_TO_HACK}")
    r, minutes = timed(train, table=both, out=runs / "mixed", overwrite=True, **hack_cfg)
    per_source = {}
    for src in ("coronahack", "folders"):
        part = both[(both["source"] == src) & (both["split"] == "test")]
        path = write_table(part, runs / "mixed" / f"test-{src}.csv")
        ev = evaluate(runs / "mixed", "table", path, out=runs / "mixed" / f"on-{src}-test")
        per_source[src] = headline(ev["test"])
    res["mixed coronahack+darkcovidnet"] = {"per_source_test": per_source, "train_min": minutes}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
