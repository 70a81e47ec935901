"""COVID-19 or the hospital? Recipes scored where both classes come from the same hospitals (`make bench-hospitals`).

The headline of every run is the within-hospital set (`external_hospitals/`: Actualmed and Figure1, COVID-19 and
Normal from the same hospitals, none of it in any training set; evaluation only): COVID-19 vs Normal AUROC with its
95% bootstrap interval (by image), on Actualmed alone too, and the share of its normals called COVID-19. Beside it:
the share of adult normals of a hospital the run did not train on (Montgomery, JSRT) called COVID-19; DarkCovidNet
held-out 3-class accuracy (the run's own test split of DarkCovidNet, 20% of its patients); and, labelled as what it
is, a cross-source pair (Hannover's COVID-19 against Montgomery's normals, two collections: the collection separates
them as well as the disease does), only where the run trained on neither.

An experiment is a recipe with changed parameters in brackets, trained with `--test-pct 0.2` at each seed:

    python bench/bench_hospitals.py --experiments covid-multisource --seeds 42,1,2
    python bench/bench_hospitals.py --experiments 'covid-multisource[preprocessing=none;resize_method=squish]'
    python bench/bench_hospitals.py --experiments 'covid-multisource[sources=darkcovidnet,coronahack,hannover,jsrt]'
    python bench/bench_hospitals.py --experiments 'darkcovidnet-pretrained[members=1]' --seeds 42,1,2

Resumable: an (experiment, seed) already in --out is not trained again. Every
figure is the run's model scored as `predict` scores it. Results: --out (JSON) and the markdown beside it.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from cxr_fast.apps.recipes import run_recipe
from cxr_fast.core.jsonio import read_json, write_atomic, write_json
from cxr_fast.core.machine import machine_info
from cxr_fast.data.multisource import COLLECTIONS
from cxr_fast.data.table import read_table
from cxr_fast.evaluation.hospitals import (auroc_with_ci, called_covid, covid_scores, images_in, with_interval,
                                           within_hospital)
from cxr_fast.evaluation.markdown import fmt, md_table
from cxr_fast.inference.predictor import load_model

ADULT_NORMALS = {"montgomery": "montgomery/images/Normal", "jsrt": "jsrt/images/Normal"}  # other hospitals' normals
PAIR = ("hannover/COVID-19", "montgomery/images/Normal")  # a cross-source pair: two collections, one class each
DARK_CLASSES = {"Covid-19": "COVID-19", "No_findings": "Normal"}  # DarkCovidNet's names -> the multisource names


def experiment(name):
    "(recipe, {parameter: value}) of 'recipe[a=1;b=x]'."
    recipe, _, changes = name.partition("[")
    return recipe, dict(c.split("=", 1) for c in filter(None, changes.rstrip("]").split(";")))


def trained_sources(run_dir):
    "The sources of the run's table (its `source` column)."
    return set(read_table(Path(run_dir) / "table.csv")["source"].astype(str))


def held_out_accuracy(model, run_dir):
    "3-class accuracy on the run's DarkCovidNet test rows (the held-out 20% of its patients), as predict scores it."
    table = read_table(Path(run_dir) / "table.csv")
    test = table[(table["split"] == "test") & (table["source"] == "darkcovidnet")]
    preds = model.predict(test["path"].tolist()).set_index("path")
    ok = preds["error"].fillna("").astype(str) == ""
    truth = test.set_index("path")["label"].map(lambda c: DARK_CLASSES.get(c, c))[ok]
    called = preds.loc[ok, "pred"].map(lambda c: DARK_CLASSES.get(c, c))
    return {"accuracy": float((called == truth.loc[called.index]).mean()), "n": int(ok.sum())}


def cross_source_pair(model, data):
    "Hannover COVID-19 vs Montgomery Normal AUROC: a pair of collections, NOT a test of the disease."
    covid, normal = images_in(Path(data) / PAIR[0]), images_in(Path(data) / PAIR[1])
    scores, _ = covid_scores(model, covid + normal)
    return auroc_with_ci(np.arange(len(scores)) < len(covid), scores, n_boot=0)


def scored(run_dir, data, external):
    "One trained run's figures, each scored as `predict` scores it."
    model, seen = load_model(Path(run_dir) / "model"), trained_sources(run_dir)
    out = {"within_hospital": within_hospital(model, external), "held_out": held_out_accuracy(model, run_dir),
           "adult_normals_not_trained_on": {k: called_covid(model, Path(data) / v) for k, v in ADULT_NORMALS.items()
                                            if k not in seen},
           "sources": sorted(seen)}
    if not {"hannover", "montgomery"} & seen: out["cross_source_pair"] = cross_source_pair(model, data)
    return out


def run_one(a, name, seed):
    recipe, changes = experiment(name)
    run_dir = Path(a.runs) / f"{name}-{seed}".replace("/", "_")
    data = Path(a.data) / ("darkcovidnet" if recipe == "darkcovidnet-pretrained" else "")
    start = time.time()
    run_recipe(recipe, data=str(data), out=str(run_dir), seed=seed, test_pct=0.2, **changes)
    return {**scored(run_dir, a.data, a.external), "train_minutes": round((time.time() - start) / 60, 1),
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def actualmed(r):
    "A run's figures on Actualmed alone (one hospital, both classes), {} when the set has none of it."
    return r["within_hospital"]["hospitals"].get("Actualmed") or {}


COLUMNS = {  # column: figure of one run
    "within-hospital AUROC [95% CI]": lambda r: with_interval(r["within_hospital"]),
    "Actualmed alone AUROC [95% CI]": lambda r: with_interval(actualmed(r)),
    "within-hospital normals called COVID-19": lambda r: fmt(r["within_hospital"]["normals_called_covid"]),
    "within-hospital AUROC by 1 - P(Normal) [95% CI]": lambda r: with_interval(r["within_hospital"].get("not_normal") or {}),
    "Montgomery normals called COVID-19 (not trained on)":
        lambda r: fmt((r["adult_normals_not_trained_on"].get("montgomery") or {}).get("share")),
    "JSRT normals called COVID-19 (not trained on)":
        lambda r: fmt((r["adult_normals_not_trained_on"].get("jsrt") or {}).get("share")),
    "DarkCovidNet held-out 3-class acc": lambda r: fmt(r["held_out"]["accuracy"]),
    "cross-source pair Hannover COVID-19 vs Montgomery Normal AUROC (collections, not disease)":
        lambda r: fmt((r.get("cross_source_pair") or {}).get("auroc")),
}
MEANS = {  # column: number of one run (None when not measured), averaged over seeds
    "within-hospital AUROC": lambda r: r["within_hospital"]["auroc"],
    "Actualmed AUROC": lambda r: actualmed(r).get("auroc"),
    "within-hospital normals called COVID-19": lambda r: r["within_hospital"]["normals_called_covid"],
    "Montgomery normals called COVID-19 (not trained on)":
        lambda r: (r["adult_normals_not_trained_on"].get("montgomery") or {}).get("share"),
    "JSRT normals called COVID-19 (not trained on)":
        lambda r: (r["adult_normals_not_trained_on"].get("jsrt") or {}).get("share"),
    "DarkCovidNet held-out 3-class acc": lambda r: r["held_out"]["accuracy"],
    "cross-source pair AUROC (collections, not disease)": lambda r: (r.get("cross_source_pair") or {}).get("auroc"),
    "train min": lambda r: r["train_minutes"],
}


def mean_rows(results):
    groups = {}
    for key, r in results.items(): groups.setdefault(key.rsplit(" / ", 1)[0], []).append((key.rsplit(" / ", 1)[1], r))
    rows = []
    for name, runs in groups.items():
        cells = []
        for f in MEANS.values():
            values = [v for v in (f(r) for _, r in runs) if v is not None]
            cells.append(fmt(float(np.mean(values))) if values else "-")
        rows.append([name, ",".join(s for s, _ in runs), *cells])
    return rows


def left_out(name):
    "The sources a covid-multisource experiment leaves out ('' for all of them; None for another recipe)."
    recipe, changes = experiment(name)
    if recipe != "covid-multisource": return None
    kept = set(changes.get("sources", ",".join(COLLECTIONS)).split(","))
    return ",".join(s for s in COLLECTIONS if s not in kept)


def leave_one_out_rows(results):
    "covid-multisource experiments that leave one source out and change nothing else: that source's figures."
    rows = []
    for name, row in zip(dict.fromkeys(k.rsplit(" / ", 1)[0] for k in results), mean_rows(results)):
        recipe, changes = experiment(name)
        gone = left_out(name)
        if gone and "," not in gone and set(changes) == {"sources"}: rows.append([gone, *row])
    return rows


def markdown(results, machine):
    return "\n".join([
        "# Within-hospital benchmark: COVID-19 or the hospital?", "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, torch {machine.get('torch')}. "
        "`python bench/bench_hospitals.py` (bench/bench_hospitals.py's docstring says what each column is).", "",
        "The within-hospital set (Actualmed: 26 COVID-19, 18 Normal; Figure1: 33 COVID-19, 3 Normal) is the one test "
        "here that a model telling hospitals apart cannot pass; it is small, so each run's figure has its interval. "
        "The last column pairs two collections, one per class: it is high for a model that tells collections apart "
        "and says nothing about the disease.", "",
        "## Means over seeds", "", *md_table(["experiment", "seeds", *MEANS], mean_rows(results)), "",
        "## Leave one source out (covid-multisource)", "",
        "The recipe as shipped without one source: that source's normals are then a hospital it never saw "
        "(its column above), and the within-hospital figures say what the source added.", "",
        *md_table(["left out", "experiment", "seeds", *MEANS], leave_one_out_rows(results)), "",
        "## Each run", "", *md_table(["experiment / seed", *COLUMNS, "sources"],
                                      [[k, *[f(r) for f in COLUMNS.values()], ",".join(r["sources"])]
                                       for k, r in results.items()]), ""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="covid-multisource", help="recipe[param=value;...], comma-separated "
                   "(a bracket may hold commas)")
    p.add_argument("--seeds", default="42,1,2")
    p.add_argument("--data", default="../shared/data", help="ROOT laid out as ../shared/data")
    p.add_argument("--external", default=None, help="the within-hospital set (default: DATA/external_hospitals)")
    p.add_argument("--runs", default="bench/tmp/hospitals")
    p.add_argument("--out", default="bench/hospitals.json")
    a = p.parse_args(argv)
    a.external = a.external or str(Path(a.data) / "external_hospitals")
    out = Path(a.out)
    results = read_json(out) or {}
    results = results.get("results", {})
    for name in split_experiments(a.experiments):
        for seed in [int(s) for s in a.seeds.split(",")]:
            key = f"{name} / {seed}"
            if key in results: continue
            results[key] = run_one(a, name, seed)
            write_json(out, {"machine": machine_info(), "results": results})
            write_atomic(out.with_suffix(".md"), lambda f: f.write_text(markdown(results, machine_info())))
            print(f"{key}: within-hospital AUROC {with_interval(results[key]['within_hospital'])}")
    write_atomic(out.with_suffix(".md"), lambda f: f.write_text(markdown(results, machine_info())))
    return 0


def split_experiments(text):
    "Experiments separated by commas outside brackets."
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0: parts.append(current); current = ""
        else: current += ch
    return [p for p in parts + [current] if p]


if __name__ == "__main__":
    raise SystemExit(main())
