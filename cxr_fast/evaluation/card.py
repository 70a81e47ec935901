"""The model card: MODEL_CARD.md in every model directory, and the same facts in model.json (`card`).

    facts = card_facts(meta)              # dict, from model.json's own entries
    write_card(model_dir, meta)           # MODEL_CARD.md (atomic)
    meta = add_evaluation(meta, entry)    # `evaluate` records each external evaluation, then rewrites both

What it says: intended use and that it is not a diagnostic device; architecture and starting weights;
training data (sources, counts per class and split, split method, leakage findings); preprocessing and
image size; internal metrics with confidence intervals; calibration and the operating point; every
external evaluation so far; known limitations (the sources it has never seen, among others).
The facts come from model.json (`data_facts(table)` adds the table's side at training time), so a card
can be rewritten at any time from the model directory alone.
"""
from datetime import datetime, timezone
from pathlib import Path

from ..core.jsonio import write_atomic
from .hospitals import within_hospital_lines
from .markdown import fmt, md_table
from .metrics import HEADLINE

CARD_NAME = "MODEL_CARD.md"
LEAK_NAMES = {"shared_patient": "patient(s) with images in two splits", "near_duplicate": "near-duplicate image pair(s) across splits"}
INTENDED_USE = ("Research and teaching: rapid experiments on chest X-ray classification, comparing training "
                "choices, and studying how such models fail. Input: one frontal (PA/AP) chest radiograph per "
                "prediction.")
DISCLAIMER = ("NOT A MEDICAL DEVICE. Research and teaching only: this model is not a medical device, has not been "
              "validated clinically or approved by any regulator, and must not be used to diagnose, triage or treat "
              "patients, or to replace a radiologist's reading.")  # the one text: model cards, serve's page and answers


# ---- facts ---------------------------------------------------------------------------------------

def data_facts(table):
    """What the card needs to know about a training table beyond its counts: sources with image counts, and the
    leakage and gap findings of the table step (counts, and a few examples)."""
    problems = table.attrs.get("problems", []) or []
    sources = (table["source"].astype(str).value_counts().to_dict() if "source" in table.columns
               else {str(table.attrs.get("source")): int(len(table))})
    kinds = {}
    for p in problems: kinds.setdefault(p["kind"], []).append(p)
    leakage = {k: {"count": len(kinds.get(k, [])), "examples": [f"{p['path'] + ': ' if p['path'] else ''}{p['detail']}"
                                                               for p in kinds.get(k, [])[:3]]}
               for k in ("shared_patient", "near_duplicate")}
    return {"sources": {str(k): int(v) for k, v in sources.items()}, "leakage": leakage,
            "classes_absent": [p["detail"] for p in kinds.get("class_absent", [])],
            "problems": {k: len(v) for k, v in kinds.items()}}


def describe_provenance(record):
    "One line: where the starting weights came from, from weights.py's provenance record (models/folder.py -> card)."
    if not record: return "not recorded"
    parts = [str(record.get("source", "?"))]
    parts += [f"{k} {record[k]}" for k in ("package", "version", "weights", "hub_id", "model_dir") if record.get(k)]
    if record.get("file"): parts.append(f"file {Path(str(record['file'])).name}")  # its name: the sha256 says which
    if record.get("sha256"): parts.append(f"sha256 {record['sha256'][:16]}...")
    if record.get("pretrained_on"): parts.append(f"pretrained on {record['pretrained_on']}")
    return ", ".join(parts)


def starting_weights(meta):
    "One line: where the body's starting weights came from (the `weights` provenance record when there is one)."
    record = meta.get("weights")
    if isinstance(record, dict) and record: return describe_provenance(record)
    if isinstance(record, str) and record: return record
    training = meta.get("training") or {}
    if training.get("weights"): return f"transferred from {training['weights']}"
    if training.get("pretrained") is True: return f"ImageNet weights ({meta.get('arch')} from torchvision/timm)"
    if training.get("pretrained") is False: return "random initialisation (trained from scratch)"
    return "not recorded"


def headline_metrics(metrics):
    "{split: {metric: {value, ci}}} of the headline metrics (and n) of the splits in a metrics dict."
    out = {}
    for split in ("valid", "test"):
        m = (metrics or {}).get(split)
        if not m: continue
        ci = m.get("ci") or {}
        out[split] = {"n": m.get("n"), **{k: {"value": m.get(k), "ci": ci.get(k)} for k in HEADLINE if k in m}}
        if (m.get("calibration") or {}).get("ece") is not None: out[split]["ece"] = m["calibration"]["ece"]
    if (metrics or {}).get("valid", {}).get("ci", {}).get("method"): out["ci_method"] = metrics["valid"]["ci"]["method"]
    return out


def trained_sources(meta):
    "The names of the sources the model was trained on."
    data = meta.get("data") or {}
    if data.get("sources"): return sorted(data["sources"])
    src = data.get("source")
    return [s for s in str(src).split("+") if s] if src else []


def limitations(meta):
    "The known limitations, from the model's own facts."
    data, metrics = meta.get("data") or {}, meta.get("metrics") or {}
    sources = trained_sources(meta)
    evaluated = sorted({e.get("source_name") or str(e.get("source")) for e in meta.get("evaluations", [])})
    out = [f"It has seen images from {', '.join(sources) or 'an unrecorded source'} only. Every other hospital, "
           f"scanner, population and dataset is unseen" + (f" except the external evaluations listed above "
                                                           f"({', '.join(evaluated)})" if evaluated else
                                                           " (no external evaluation has been run on it)") +
           ": chest X-ray models mostly fail on data from other sources (Roberts et al. 2021; DeGrave et al. 2021)."]
    if any("phantom" in s for s in sources):
        out.append("Its training data are synthetic phantoms: its numbers say nothing about real X-rays.")
    if len(sources) > 1 or len(data.get("sources") or {}) > 1:
        out.append("Its classes may come from different sources: a model can learn to tell the sources apart "
                   "instead of the disease.")
    out.append(f"It knows only the classes {', '.join(map(str, meta.get('classes', [])))}: any other finding is "
               f"called one of them.")
    out.append("It is made for frontal chest radiographs. `predict` flags other modalities, body parts, lateral views, "
               "coloured, extreme-shape and blank images in its `warning` column, but still predicts them.")
    n_test = (metrics.get("test") or {}).get("n")
    if n_test is not None and n_test < 200:
        out.append(f"The internal test split has {n_test} images: the confidence intervals are wide.")
    if not metrics.get("test"):
        out.append("There is no internal test split: the internal metrics are on the validation split, which also "
                   "chose the best epoch, the temperature and the thresholds, so they are optimistic.")
    for detail in data.get("classes_absent", []):
        out.append(f"Gap in the data: {detail}.")
    leaks = {k: v.get("count", 0) for k, v in (data.get("leakage") or {}).items()}
    if any(leaks.values()):
        out.append("Leakage found when the table was built (" + ", ".join(f"{n} {LEAK_NAMES.get(k, k)}" for k, n in
                                                                         leaks.items() if n) +
                   "): the internal metrics may be optimistic.")
    if (meta.get("calibration") or {}).get("method") == "temperature scaling":
        out.append("The temperature was fitted on the validation split of the training sources; on other sources the "
                   "probabilities can be miscalibrated again (see the external evaluations' ECE).")
    return out


def card_facts(meta):
    "The card's facts as a dict (what model.json's `card` holds)."
    return {"intended_use": INTENDED_USE, "disclaimer": DISCLAIMER,
            "architecture": {k: meta.get(k) for k in ("arch", "head", "n_out", "task", "classes", "multilabel", "loss",
                                                      "members")},
            "starting_weights": starting_weights(meta),
            "training_data": {k: (meta.get("data") or {}).get(k) for k in
                              ("source", "sources", "task", "split_method", "counts", "leakage", "classes_absent")},
            "preprocessing": {"img_size": meta.get("img_size"), "resize_method": meta.get("resize_method", "squish"),
                              "preprocessing": meta.get("preprocessing", "none"), "normalize": meta.get("normalize"),
                              "jpeg_quality": meta.get("jpeg_quality"),
                              "decoding": "every file decoded to 8-bit grayscale, replicated to 3 channels",
                              "tta": bool(meta.get("tta", False))},
            "internal_metrics": headline_metrics(meta.get("metrics")),
            "calibration": meta.get("calibration") or {"method": "none"},
            "operating_point": meta.get("operating_point"), "thresholds": meta.get("thresholds"),
            "external_evaluations": list(meta.get("evaluations", [])), "limitations": limitations(meta),
            "shortcut_audit": meta.get("audit"), "within_hospital": meta.get("within_hospital")}


# ---- external evaluations -------------------------------------------------------------------------

def evaluation_entry(result, config, out):
    "What one `evaluate` run adds to the card: when, on what, headline metrics with CIs, ECE, where the report is."
    test = result.get("test") or {}
    ci = test.get("ci") or {}
    source = config.get("source")
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "source": source,
            "source_name": f"{source}:{Path(str(config.get('root', ''))).name}" if config.get("root") else str(source),
            "root": str(config.get("root")), "task": config.get("task"), "split": config.get("split", "all"),
            "class_map": result.get("class_map") or {}, "n": test.get("n"),
            "metrics": {k: {"value": test.get(k), "ci": ci.get(k)} for k in HEADLINE if k in test},
            "ece": (test.get("calibration") or {}).get("ece"),
            "unknown_classes": {k: v.get("images") for k, v in (result.get("unknown_classes") or {}).items()},
            "images_in_training_table": result.get("images_in_training_table", 0), "report": str(Path(out) / "report.md")}


def add_evaluation(meta, entry):
    "meta with `entry` in its `evaluations` (an earlier evaluation written to the same report is replaced) and its card."
    evaluations = [e for e in meta.get("evaluations", []) if e.get("report") != entry.get("report")] + [entry]
    meta = {**meta, "evaluations": evaluations}
    meta["card"] = card_facts(meta)
    return meta


# ---- MODEL_CARD.md ---------------------------------------------------------------------------------

def _with_ci(entry):
    if not isinstance(entry, dict): return fmt(entry)
    ci = entry.get("ci")
    return fmt(entry.get("value")) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def counts_table(counts):
    "The class counts per split ({split: {row: n}}, as model.json's data.counts holds them) as markdown lines."
    if not counts: return ["Not recorded."]
    splits = list(counts)
    rows = list(dict.fromkeys(r for s in splits for r in counts[s]))
    return md_table(["", *splits], [[r, *[counts[s].get(r, 0) for s in splits]] for r in rows])


def ensemble_words(members):
    "', an ensemble of N ...' for a card's architecture line (nothing for one model)."
    n = int(members or 1)
    return f"; an ensemble of {n} such models trained alike from different seeds, their logits averaged" if n > 1 else ""


def render_card(meta, title=None):
    "MODEL_CARD.md's text for a model's meta (model.json)."
    facts = card_facts(meta)
    arch, data, pre = facts["architecture"], facts["training_data"], facts["preprocessing"]
    head = arch.get("head") or {}
    lines = [f"# Model card: {title or arch.get('arch')} ({arch.get('task')})", "",
             f"> **{DISCLAIMER}**", "",
             "## Intended use", "", INTENDED_USE, "",
             "## Model", "",
             f"- architecture: {arch.get('arch')}, head hidden {head.get('hidden') or 'fastai default [512]'}, "
             f"dropout {head.get('dropout')}, {arch.get('n_out')} outputs{ensemble_words(arch.get('members'))}",
             f"- task: {arch.get('task')} ({'multi-label, sigmoid per label' if arch.get('multilabel') else 'single-label, softmax'}); "
             f"classes: {', '.join(map(str, arch.get('classes') or []))}; loss: {arch.get('loss')}",
             f"- starting weights: {facts['starting_weights']}",
             f"- written by cxr_fast {meta.get('cxr_fast_version', '?')}", "",
             "## Training data", "",
             "- sources: " + (", ".join(f"{k} ({v} images)" for k, v in (data.get("sources") or {}).items())
                               or str(data.get("source"))),
             f"- task: {data.get('task')}; split: {data.get('split_method')}", "",
             *counts_table(data.get("counts")), ""]
    leakage = data.get("leakage")
    if leakage:
        found = {k: v for k, v in leakage.items() if v.get("count")}
        if found:
            lines += ["Leakage findings of the table step:", ""]
            for k, v in found.items():
                lines += [f"- {v['count']} {LEAK_NAMES.get(k, k)}" + (f", e.g. {v['examples'][0]}" if v["examples"] else "")]
            lines += [""]
        else: lines += ["Leakage check: no patient and no near-duplicate image is shared between splits.", ""]
    else: lines += ["Leakage check: not recorded.", ""]
    lines += ["## Preprocessing", "",
              f"- image size {pre['img_size']} ({pre['resize_method']}); preprocessing: {pre['preprocessing']}"
              + (f"; every image through JPEG (quality {pre['jpeg_quality'][0]}-{pre['jpeg_quality'][1]} in training, "
                 f"the middle of that in predict)" if pre.get("jpeg_quality") else ""),
              f"- {pre['decoding']}; normalised with mean {(pre.get('normalize') or {}).get('mean')}, "
              f"std {(pre.get('normalize') or {}).get('std')}",
              *(["- test-time augmentation: the metrics are of the mean logits of 6 views (a centre zoom and four "
                 "shifted zooms); predict uses them unless told --tta false"] if pre.get("tta") else []), ""]
    lines += ["## Internal metrics", ""]
    internal = facts["internal_metrics"]
    splits = [s for s in ("valid", "test") if s in internal]
    if splits:
        lines += md_table(["split", "images", *[k.replace("_", " ") for k in HEADLINE], "ECE"],
                        [[s, internal[s].get("n"), *[_with_ci(internal[s].get(k)) for k in HEADLINE],
                          fmt(internal[s].get("ece"))] for s in splits])
        if internal.get("ci_method"): lines += ["", f"In brackets: {internal['ci_method']}."]
        lines += ["", "The valid split chose the best epoch, the temperature and the thresholds: its numbers are optimistic.", ""]
    else: lines += ["Not recorded.", ""]
    lines += calibration_lines(facts)
    lines += ["## External evaluations", ""]
    evaluations = facts["external_evaluations"]
    if evaluations:
        lines += md_table(["date", "data", "images", *[k.replace("_", " ") for k in HEADLINE], "ECE", "report"],
                        [[e.get("date"), e.get("source_name"), e.get("n"),
                          *[_with_ci(e.get("metrics", {}).get(k)) for k in HEADLINE], fmt(e.get("ece")), e.get("report")]
                         for e in evaluations])
        notes = [f"- {e.get('source_name')}: {e['images_in_training_table']} of its images are in the training table "
                 f"(leakage)" for e in evaluations if e.get("images_in_training_table")]
        notes += [f"- {e.get('source_name')}: classes the model does not know, not scored: "
                  + ", ".join(f"{k} ({n})" for k, n in e["unknown_classes"].items()) for e in evaluations
                  if e.get("unknown_classes")]
        lines += ["", *notes] + ([""] if notes else [])
    else:
        lines += ["None yet: `python -m cxr_fast evaluate MODEL_DIR SOURCE ROOT` adds one here.", ""]
    if facts.get("within_hospital"): lines += within_hospital_lines(facts["within_hospital"])
    lines += shortcut_lines(facts.get("shortcut_audit"))
    lines += ["## Known limitations", "", *[f"- {x}" for x in facts["limitations"]], ""]
    return "\n".join(lines) + "\n"


def shortcut_lines(audit):
    "The shortcut audit's verdict on the training data (apps/audit/fast.py's summary), or that none was run."
    lines = ["## Shortcut audit", ""]
    if not audit: return lines + ["Not run on this model's training data (`python -m cxr_fast audit RUN_DIR`).", ""]
    lines += [f"**{audit.get('level')}**: {audit.get('verdict')}", ""]
    if audit.get("of") != "the run":
        return lines + ["From the training table's file facts and sources (`train` runs them; `python -m cxr_fast audit "
                        "RUN_DIR` adds the border-only probes, Grad-CAM and the acquisition counterfactual).", ""]
    cf = audit.get("counterfactual")
    if cf:
        lines += [f"Acquisition counterfactual ({cf['n']} held-out images, each stored another way): predictions "
                  "flipped by " + ", ".join(f"{c} {v:.2f}" for c, v in cf["flipped"].items() if v is not None) + ".", ""]
    return lines + ["From `python -m cxr_fast audit RUN_DIR` (file facts, sources, pixel probes, Grad-CAM, the "
                    "acquisition counterfactual).", ""]


def calibration_lines(facts):
    "The card's calibration section."
    cal = facts.get("calibration") or {}
    lines = ["## Calibration and decisions", ""]
    if cal.get("method") == "temperature scaling":
        t = cal.get("temperature")
        shown = ", ".join(f"{c} {v:.3f}" for c, v in t.items()) if isinstance(t, dict) else fmt(t)
        lines += [f"Temperature scaling, fitted on the {cal.get('fitted_on')} split ({cal.get('n_fit')} images): "
                  f"T = {shown}; `predict`, `evaluate` and the demo page give the scaled probabilities.", ""]
        ece = cal.get("ece") or {}
        if ece:
            lines += md_table(["split", "ECE before", "ECE after"],
                            [[s, fmt(v.get("before")), fmt(v.get("after"))] for s, v in ece.items()]) + [""]
    else:
        lines += ["No temperature scaling: the probabilities are the network's own.", ""]
    op = facts.get("operating_point")
    if op:
        test, base = op.get("test") or {}, (op.get("at_default") or {}).get("test") or {}
        lines += [f"Decision: the disease class when its probability >= {op['threshold']:.4f}, the operating point for "
                  f"sensitivity {op['target_sensitivity']:.2f} chosen on {op['chosen_on']}"
                  + (f"; on test: sensitivity {fmt(test.get('sensitivity'))}, specificity {fmt(test.get('specificity'))} "
                     f"(at {op['default_threshold']}: {fmt(base.get('sensitivity'))}, {fmt(base.get('specificity'))})"
                     if test else "") + ".", ""]
    elif facts.get("thresholds"):
        lines += [f"Thresholds: {facts['thresholds']}.", ""]
    return lines


def write_card(model_dir, meta, title=None):
    "Write MODEL_CARD.md for `meta` into the model dir (atomic); returns its path."
    text = render_card(meta, title)
    return write_atomic(Path(model_dir) / CARD_NAME, lambda p: p.write_text(text))
