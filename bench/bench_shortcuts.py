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
- and back (experiment `hack-pretrained`): trained on CoronaHack, scored on DarkCovidNet's NIH images (Pneumonia vs
  No_findings AUROC, the share called COVID-19) and on its Covid-19 images that are not copies of a CoronaHack one;
- `--audit`: `cxr_fast audit RUN_DIR` on runs already trained (its probes under the run's own preprocessing,
  Grad-CAM outside the central field, file facts).
Every figure is the run's model scored as `predict` scores it (Predictor, `--precision auto`: fp32 on a CPU, whatever
precision the run trained in); `--rescore` scores runs already trained again that way (it trains nothing).

    python bench/bench_shortcuts.py --experiments pretrained --mitigations none,all --seeds 42,1,2
    python bench/bench_shortcuts.py --experiments 'pretrained[size=224]' --mitigations border --seeds 42
    python bench/bench_shortcuts.py --experiments pretrained --mitigations none,border --seeds 42 --audit
    python bench/bench_shortcuts.py --experiments pretrained --mitigations none,border --seeds 42,1 --rescore

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
from cxr_fast.apps.recipes import recipe_module  # noqa: E402

darkcovidnet_pretrained = recipe_module("darkcovidnet-pretrained")  # the recipes' configurations are what we measure
darkcovidnet_scratch = recipe_module("darkcovidnet-scratch")
from bench_cross_source import data_arguments  # noqa: E402

from cxr_fast.data.load import load_table  # noqa: E402
from cxr_fast.inference.predictor import load_model  # noqa: E402
from cxr_fast.core.jsonio import read_json, write_json  # noqa: E402
from cxr_fast.core.machine import machine_info  # noqa: E402
from cxr_fast.data.images import dhash, load_image  # noqa: E402
from cxr_fast.evaluation.report import fmt, md_table  # noqa: E402
from cxr_fast.data.table import NEAR_DUPLICATE_BITS, hash_distances, hash_rows, read_table  # noqa: E402
from cxr_fast.training.options import OPTIONS  # noqa: E402
from cxr_fast.training.run import train  # noqa: E402

ACQUISITION = dict(resize_method="pad", jpeg_quality="30:95", preprocessing="standardize")
MITIGATIONS = {  # each on top of the recipe's configuration with the mitigations off ("none" turns them off)
    "none": {"resize_method": "squish", "jpeg_quality": None, "preprocessing": "none"},
    "acquisition": ACQUISITION,                       # one acquisition path: pad, JPEG at random quality, intensity
    "border": {"resize_method": "squish", "jpeg_quality": None, "preprocessing": "crop-field"},  # the central field only
    "all": {**ACQUISITION, "preprocessing": "standardize+crop-field"},
    # the central field, then its histogram equalised: contrast evened out between sources on the lungs, not the border
    "border-equalize": {"resize_method": "squish", "jpeg_quality": None, "preprocessing": "crop-field+equalize"},
    # the central field, then a square crop of it (a random position in training): no image is stretched, so the
    # aspect ratio (Covid-19's images are not square, NIH's are) never reaches the model, at the cost of the sides
    "border-square": {"resize_method": "crop", "jpeg_quality": None, "preprocessing": "crop-field"},
    # the central field, then every training image through JPEG at a random quality: compression stops meaning a class
    "border-jpeg": {"resize_method": "squish", "jpeg_quality": "30:95", "preprocessing": "crop-field"},
}


BACK = "hack-"  # 'hack-pretrained': the reverse direction, trained on CoronaHack and scored on DarkCovidNet
BACK_SIZE, BACK_EPOCHS = 128, 4  # bench_cross_source.py's CoronaHack part: 5,300 training images, kept short


def experiment_config(name):
    """train() keywords of an experiment: 'pretrained' or 'scratch' (the recipes' configurations), either one with
    any of train's options changed in brackets (OPTIONS), e.g. 'pretrained[size=224;arch=tf_efficientnet_lite2]' or
    'pretrained[tta=true]'; the pretrained plan is made from the changed options (epochs=10 trains 10 epochs);
    'pretrained' trains one model (the recipe's ONE_MODEL), 'pretrained[members=3]' the recipe's ensemble;
    'hack-pretrained' is the pretrained configuration at BACK_SIZE px, head 2 + all BACK_EPOCHS epochs, for the
    reverse direction."""
    base, _, changes = name.partition("[")
    plan_options = ("head_epochs", "head_lr") if base.endswith("pretrained") else ()  # the pretrained plan's own
    changed = {}
    for change in filter(None, changes.rstrip("]").split(";")):
        key, _, value = change.partition("=")
        if key not in OPTIONS and key not in plan_options:
            sys.exit(f"{name}: {key!r} is not one of train's options ({', '.join((*OPTIONS, *plan_options))})")
        changed[key] = OPTIONS[key].coerce(value) if key in OPTIONS else type(darkcovidnet_pretrained.BEST[key])(value)
    one_model = darkcovidnet_pretrained.ONE_MODEL  # 'pretrained' is one model; the recipe's ensemble: [members=3]
    if base == "pretrained": return darkcovidnet_pretrained.fit_config("best", "3class", **{**one_model, **changed})
    if base == BACK + "pretrained":
        return darkcovidnet_pretrained.fit_config("best", "3class", **{**one_model, "size": BACK_SIZE,
                                                                       "epochs": BACK_EPOCHS, **changed})
    if base == "scratch": return {**darkcovidnet_scratch.BEST, "bf16": None, **changed}
    sys.exit(f"--experiments takes pretrained, scratch and/or {BACK}pretrained (optionally [option=value;...]), "
             f"not {name!r}")


def auroc(y, score):
    y = np.asarray(y, dtype=bool)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def copies(paths, of_paths):
    "For each image of `paths`, whether it is a copy (dhash within NEAR_DUPLICATE_BITS) of one of `of_paths`."
    if not len(of_paths): return np.zeros(len(paths), dtype=bool)
    def rows(ps): return hash_rows([dhash(load_image(p)) for p in ps])
    theirs = rows(of_paths)
    return np.array([(hash_distances(theirs, h) <= NEAR_DUPLICATE_BITS).any() for h in rows(paths)], dtype=bool)


def predicted(run_dir, table):
    "The run's model on `table`'s images: (the rows it could read, their predictions in the same order)."
    preds = load_model(Path(run_dir) / "model").predict(table["path"].tolist()).set_index("path")
    readable = preds.index[preds["error"].fillna("").astype(str) == ""]  # an error row names why; others have ""
    table = table[table["path"].isin(readable)]
    return table, preds.loc[table["path"]]


def cross_source(run_dir, hack_root):
    """The DarkCovidNet model of `run_dir` on CoronaHack: Covid-19 vs Normal AUROC and Covid-19 recall (on all
    CoronaHack COVID-19 images, and on the unseen ones: copies of the run's test images), Covid-19 calls on TEST,
    Pneumonia vs Normal AUROC."""
    ours = read_table(Path(run_dir) / "table.csv")
    held_out = ours.loc[(ours["split"] == "test") & (ours["label"] == "Covid-19"), "path"].tolist()
    hack = load_table("coronahack", hack_root, "3class", valid_pct=0.0, dedup="off", check=False)
    hack = hack[hack["label"].isin(["COVID-19", "Normal"]) | (hack["split"] == "test")]  # the rows the figures use
    hack, p = predicted(run_dir, hack)
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


def back_cross_source(run_dir, dark_root, hack_root):
    """The reverse direction: the CoronaHack model of `run_dir` on all of DarkCovidNet (adult NIH Normal/Pneumonia;
    Covid-19 from Cohen et al.'s collection). Pneumonia vs No_findings AUROC over the NIH images (the disease, within
    one other hospital), the share of NIH images called COVID-19, and Covid-19 vs No_findings AUROC over the
    DarkCovidNet Covid-19 images that are not copies of a CoronaHack image (never seen in training)."""
    dark = load_table("folders", dark_root, "folders", valid_pct=0.0, dedup="off", check=False)
    dark, p = predicted(run_dir, dark)
    hack = load_table("coronahack", hack_root, "3class", valid_pct=0.0, dedup="off", check=False)
    covid = (dark["label"] == "Covid-19").to_numpy()
    unseen = covid.copy()
    unseen[covid] = ~copies(dark["path"][covid].tolist(), hack.loc[hack["label"] == "COVID-19", "path"].tolist())
    nih = dark["label"].isin(["No_findings", "Pneumonia"]).to_numpy()
    normal = (dark["label"] == "No_findings").to_numpy()
    pn = p["p_Pneumonia"] / (p["p_Pneumonia"] + p["p_Normal"])
    return {"nih_pneumonia_vs_normal_auroc": auroc(dark["label"][nih] == "Pneumonia", pn[nih]),
            "nih_called_covid": float((p["pred"][nih] == "COVID-19").mean()), "n_nih": int(nih.sum()),
            "covid_vs_normal_auroc_unseen": auroc(unseen[unseen | normal], p["p_COVID-19"][unseen | normal]),
            "covid_recall_unseen": float((p["pred"][unseen] == "COVID-19").mean()), "n_covid_unseen": int(unseen.sum())}


def scored_split(run_dir, split):
    "(labels, predictions) of the run's own `split` images, scored by its model as `predict` scores them."
    table = read_table(Path(run_dir) / "table.csv")
    table, p = predicted(run_dir, table[table["split"] == split])
    return table["label"].to_numpy(), p


def accuracy(y, pred):
    return float((pred.to_numpy() == y).mean())


def recall(y, pred, label):
    return float((pred.to_numpy()[y == label] == label).mean())


def in_source(run_dir):
    """A DarkCovidNet model on its held-out test patients, scored as `predict` scores them (fp32 on a CPU, whatever
    the run trained in): 3-class accuracy, Covid-19 AUROC and recall."""
    y, p = scored_split(run_dir, "test")
    return {"accuracy": accuracy(y, p["pred"]), "covid_auroc": auroc(y == "Covid-19", p["p_Covid-19"]),
            "covid_recall": recall(y, p["pred"], "Covid-19"), "n": len(y)}


def back_in_source(run_dir):
    """A CoronaHack model's own figures, scored as in_source: Kaggle TEST accuracy (Normal/Pneumonia) and Pneumonia
    AUROC, and its recall on the few COVID-19 images of its valid split."""
    y, p = scored_split(run_dir, "test")
    valid_y, valid_p = scored_split(run_dir, "valid")
    return {"accuracy": accuracy(y, p["pred"]), "pneumonia_auroc": auroc(y == "Pneumonia", p["p_Pneumonia"]),
            "valid_covid_recall": recall(valid_y, valid_p["pred"], "COVID-19"), "n": len(y)}


def scored(a, run_dir):
    "A trained run's figures, in-source and across sources, each scored as `predict` scores it."
    if Path(run_dir).name.startswith(BACK):  # trained on CoronaHack (its Kaggle TEST as test), scored on DarkCovidNet
        return {"in_source": back_in_source(run_dir), "cross_source": back_cross_source(run_dir, a.dark, a.hack)}
    return {"in_source": in_source(run_dir), "cross_source": cross_source(run_dir, a.hack)}


def now():
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def run_one(a, experiment, mitigation, seed):
    config = {**experiment_config(experiment), **MITIGATIONS[mitigation], "seed": seed, "overwrite": True, "audit": False}
    run_dir = Path(a.runs) / f"{experiment}-{mitigation}-{seed}"
    start = time.time()
    if experiment.startswith(BACK):
        train(source="coronahack", root=a.hack, task="3class", valid_pct=0.1, out=run_dir, **config)
    else:
        train(source="folders", root=a.dark, task="folders", classes=darkcovidnet_pretrained.TASK_CLASSES["3class"],
              valid_pct=0.1, test_pct=0.2, out=run_dir, **config)
    minutes = round((time.time() - start) / 60, 1)
    return {**scored(a, run_dir), "train_minutes": minutes,
            "config": {k: str(v) for k, v in MITIGATIONS[mitigation].items()}, "measured": now()}


def selected(results, a):
    "The keys of `results` in --experiments x --mitigations x --seeds."
    want = [a.experiments.split(","), a.mitigations.split(","), a.seeds.split(",")]
    return [k for k in results if all(part in w for part, w in zip(k.split(" / "), want))]


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


def audit_figures(run_dir):
    """The audit of a trained run (`cxr_fast audit RUN_DIR`, written to RUN_DIR/audit): its short probes trained with
    the run's own preprocessing (so under crop-field, "border only" is the border of the cropped field the model
    sees), Grad-CAM's share outside the central field, and the file facts (the same files whatever the mitigation)."""
    from cxr_fast.apps.audit.core import audit
    a = audit(str(run_dir), out=Path(run_dir) / "audit")
    pixel, cam = a.get("pixel") or {}, a.get("gradcam") or {}
    def covid(probe): return ((pixel.get(probe) or {}).get("auroc") or {}).get("Covid-19")
    return {"file_facts_covid_auroc": ((a.get("file_facts") or {}).get("auroc") or {}).get("Covid-19"),
            "border_only_covid_auroc": covid("border_only"), "center_only_covid_auroc": covid("center_only"),
            "full_probe_covid_auroc": covid("full"), "gradcam_outside_share": cam.get("outside_share"),
            "probe": f"{(pixel.get('config') or {}).get('size')} px, {pixel.get('split')} split",
            "gradcam_uniform_share": cam.get("uniform_share"), "verdict": (a.get("verdict") or {}).get("level")}


AUDIT_COLUMNS = {
    "probe: border only Covid-19 AUROC": (lambda r: r["audit"]["border_only_covid_auroc"]),
    "probe: central field only Covid-19 AUROC": (lambda r: r["audit"]["center_only_covid_auroc"]),
    "probe: full Covid-19 AUROC": (lambda r: r["audit"]["full_probe_covid_auroc"]),
    "Grad-CAM mass outside the central field": (lambda r: r["audit"]["gradcam_outside_share"]),
    "file facts Covid-19 AUROC": (lambda r: r["audit"]["file_facts_covid_auroc"]),
    "verdict": (lambda r: r["audit"]["verdict"]),
}


BACK_COLUMNS = {  # the reverse direction: a CoronaHack model on DarkCovidNet
    "in-source TEST acc (Normal/Pneumonia)": (lambda r: r["in_source"]["accuracy"]),
    "in-source TEST Pneumonia AUROC": (lambda r: r["in_source"]["pneumonia_auroc"]),
    "NIH Pneumonia vs No_findings AUROC": (lambda r: r["cross_source"]["nih_pneumonia_vs_normal_auroc"]),
    "NIH (no COVID-19) called COVID-19": (lambda r: r["cross_source"]["nih_called_covid"]),
    "DarkCovidNet unseen Covid-19 vs No_findings AUROC": (lambda r: r["cross_source"]["covid_vs_normal_auroc_unseen"]),
    "DarkCovidNet unseen Covid-19 recall": (lambda r: r["cross_source"]["covid_recall_unseen"]),
}


def mean_rows(results, columns=COLUMNS):
    "One row per experiment / mitigation: the mean of each column over its seeds, and the seeds."
    groups = {}
    for key, r in results.items():
        experiment, mitigation, seed = key.split(" / ")
        groups.setdefault(f"{experiment} / {mitigation}", []).append((seed, r))
    rows = []
    for name, runs in groups.items():
        values = [[f(r) for _, r in runs] for f in columns.values()]
        rows.append([name, ",".join(s for s, _ in runs),
                     *[fmt(float(np.mean([v for v in vs if v is not None]))) if any(v is not None for v in vs) else "-"
                       for vs in values]])
    return rows


def scoring_words(results):
    "The line that says which runs were scored again (`--rescore`) and when; nothing when none was."
    dates = sorted(r["rescored"] for r in results.values() if r.get("rescored"))
    if not dates: return []
    return [f"{len(dates)} of {len(results)} runs scored again with `--rescore` ({dates[0]} to {dates[-1]}): their "
            "figures are predict's on their saved models now (fp32 on a CPU), not those of the day they trained."]


def markdown(all_results, machine):
    results = {k: r for k, r in all_results.items() if not k.startswith(BACK)}
    back = {k: r for k, r in all_results.items() if k.startswith(BACK)}
    rows = [[key, *[fmt(f(r)) for f in COLUMNS.values()], str(r["train_minutes"])] for key, r in results.items()]
    lines = ["# Shortcut mitigations: in-source cost, cross-source effect", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, torch {machine.get('torch')}.",
             "CoronaHack's 52 COVID-19 images are copies of DarkCovidNet Covid-19 images: `unseen` columns use only "
             "the copies of each run's held-out test images (about 10 per seed); the last column includes images the "
             "model trained on.",
             "Mitigations: " + "; ".join(f"`{k}` = {v}" for k, v in MITIGATIONS.items()) + ".",
             *scoring_words(all_results), "",
             "## Means over seeds", "", *md_table(["experiment / mitigation", "seeds", *COLUMNS], mean_rows(results)), "",
             "## Each run", "", *md_table(["experiment / mitigation / seed", *COLUMNS, "train min"], rows), ""]
    if back:
        lines += ["## And back: trained on CoronaHack, scored on DarkCovidNet", "",
                  f"`{BACK}pretrained`: the pretrained configuration at {BACK_SIZE} px, head 2 + all {BACK_EPOCHS} "
                  "epochs, trained on CoronaHack 3-class (TRAIN, 10% of it as valid; Kaggle TEST as test). On "
                  "DarkCovidNet: the NIH images (adults, another hospital) and the Covid-19 images that are not "
                  "copies of a CoronaHack one (never seen in training).", "",
                  *md_table(["experiment / mitigation", "seeds", *BACK_COLUMNS], mean_rows(back, BACK_COLUMNS)), "",
                  *md_table(["experiment / mitigation / seed", *BACK_COLUMNS, "train min"],
                            [[k, *[fmt(f(r)) for f in BACK_COLUMNS.values()], str(r["train_minutes"])]
                             for k, r in back.items()]), ""]
    audited = {key: r for key, r in results.items() if r.get("audit")}
    if audited:
        lines += ["## The audit of each run (`--audit`)", "",
                  "`python -m cxr_fast audit RUN_DIR` on the trained run: its probes (same options and preprocessing "
                  "as the run, short: " + next(iter(audited.values()))["audit"]["probe"] + ") on the border only, "
                  "the central field only and the full image; Grad-CAM over its test split (a uniform map: "
                  f"{next(iter(audited.values()))['audit']['gradcam_uniform_share']}; under crop-field the share "
                  "outside the central field of the crop the model sees).", "",
                  *md_table(["experiment / mitigation / seed", *AUDIT_COLUMNS],
                            [[key, *[fmt(f(r)) for f in AUDIT_COLUMNS.values()]] for key, r in audited.items()]), ""]
    return "\n".join(lines)


def main():
    p = data_arguments("shortcuts", "shortcuts.json")
    p.add_argument("--experiments", default="pretrained")
    p.add_argument("--mitigations", default="none,all")
    p.add_argument("--seeds", default="42")
    p.add_argument("--rescore", action="store_true", help="score again the trained runs of these experiments, "
                   "mitigations and seeds, in-source and across sources, as predict scores them now; trains nothing")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the JSON")
    p.add_argument("--audit", action="store_true", help="audit the trained runs of these experiments, mitigations "
                   "and seeds (probes under the run's preprocessing, Grad-CAM); trains nothing new")
    a = p.parse_args()
    saved = read_json(a.out) or {}
    results, machine = saved.get("results", {}), machine_info()
    if a.report:
        Path(a.out).with_suffix(".md").write_text(markdown(results, saved.get("machine", machine)))
        return
    if a.rescore:
        for key in selected(results, a):
            results[key].update(scored(a, Path(a.runs) / key.replace(" / ", "-")), rescored=now(),
                                rescored_machine=machine.get("cpu_model"))
            write_json(a.out, {"results": results, "machine": machine})
            Path(a.out).with_suffix(".md").write_text(markdown(results, machine))
            print(key, json.dumps({k: results[key][k] for k in ("in_source", "cross_source")}), flush=True)
        return
    if a.audit:
        for key in selected(results, a):
            if results[key].get("audit"): continue  # resumable
            results[key]["audit"] = audit_figures(Path(a.runs) / key.replace(" / ", "-"))
            write_json(a.out, {"results": results, "machine": machine})
            Path(a.out).with_suffix(".md").write_text(markdown(results, machine))
            print(key, json.dumps(results[key]["audit"]), flush=True)
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
