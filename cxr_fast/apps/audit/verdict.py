"""The audit's verdict in words with its numbers, and audit.md.

A class is flagged when what is not the lungs finds it: file facts (acquisition facts alone, or with the
content-mixed file size), the image border alone, or a class that comes (nearly) from one source. The thresholds
are stated in the text and in audit.json, so a reader can judge them.
"""
import numpy as np

from ...data.images import CENTRAL_FIELD
from .counterfactual import finding as counterfactual_finding, lines as counterfactual_lines
from ...evaluation.report import fmt, md_table
from ...training.options import ACQUISITION_PATH, SHORTCUT_MITIGATION, flags_of

STRONG, NOTABLE = 0.90, 0.75  # AUROC from a shortcut alone: strongly / notably predictive (chance is 0.5); for file
# facts judged on the lower end of the AUROC's 95% patient-level bootstrap interval, so that a few images flag nothing
LOOKS_OUTSIDE = 0.10  # Grad-CAM mass outside the field this far above a uniform map's share: the model looks at the border
SQUARE_CROP = (f"the central field cropped to a square for every image (`{flags_of(SHORTCUT_MITIGATION)}`: "
               "no image stretched, so shape and border reach the model less; it hides the file's look, not the "
               "hospital's: on DarkCovidNet it left the model near chance where COVID-19 and normal come from the same "
               "hospitals, docs/shortcuts.md)")
ONE_PATH = (f"one acquisition path for every image (`{flags_of(ACQUISITION_PATH)}`: whole, padded square, through "
            "JPEG q90): where COVID-19 and normal share hospitals it did better than the square crop (DarkCovidNet, "
            "3 seeds: AUROC 0.68 against 0.59, docs/shortcuts.md), still far from a model that reads the disease")
MITIGATION = {  # what `train` offers against each kind of finding, measured best first (docs/shortcuts.md)
    "border": (SQUARE_CROP, ONE_PATH),
    "acquisition": (ONE_PATH, SQUARE_CROP),
    "sources": ("source-balanced sampling (`--balance-sources true`) where a class comes from several sources",),
}


def _auc(d, cls):
    v = (d or {}).get(cls)
    return v if isinstance(v, (int, float)) and np.isfinite(v) else None


def _facts_named(file_facts, cls, group=None):
    "The facts that carry a class best (by their single-fact AUROC), as words."
    groups = file_facts.get("facts") or {}
    top = [(f, a) for f, a in (file_facts.get("top_facts") or {}).get(cls, [])
           if a is not None and a >= NOTABLE and (group is None or groups.get(f) == group)]
    return ", ".join(f.replace("_", " ") for f, _ in top[:3])


def _low(ci, cls):
    "The lower end of a class's interval ({class: [low, high]}), or None when there is none."
    v = (ci or {}).get(cls)
    return v[0] if isinstance(v, (list, tuple)) and v and v[0] is not None else None


def _level(auc, low):
    "0, 1 (notable) or 2 (strong) for an AUROC: judged on its interval's lower end where it has one."
    x = low if low is not None else auc
    return 2 if x >= STRONG else 1 if x >= NOTABLE else 0


def _with_interval(auc, ci, cls):
    v = (ci or {}).get(cls)
    return f"AUROC {auc:.2f}" + (f" [{v[0]:.2f}, {v[1]:.2f}]" if isinstance(v, (list, tuple)) and v else "")


def class_findings(cls, file_facts, pixel, full_auc):
    "The sentences for one class, how strong its shortcut is (0 none, 1 notable, 2 strong), and its kinds."
    if cls in (file_facts.get("too_few") or []):
        return f"{cls}: too few images to tell whether anything but the lungs predicts it.", 0, set()
    acquisition = file_facts.get("acquisition") or {}
    acq = _auc(acquisition.get("auroc"), cls)
    every = _auc(file_facts.get("auroc"), cls)
    border = _auc(((pixel or {}).get("border_only") or {}).get("auroc"), cls)
    parts, level, kinds = [], 0, set()
    acq_level = _level(acq, _low(acquisition.get("ci"), cls)) if acq is not None else 0
    if acq_level:
        named = _facts_named(file_facts, cls, "acquisition") or "acquisition facts"
        parts.append(f"from file facts alone ({named}: {_with_interval(acq, acquisition.get('ci'), cls)})")
        level = max(level, acq_level)
        kinds.add("acquisition")
    elif every is not None and _level(every, _low(file_facts.get("ci"), cls)):  # content-mixed: a note only
        parts.append(f"from file size alone ({_with_interval(every, file_facts.get('ci'), cls)}; acquisition facts "
                     f"{fmt(acq, 2)}), which for lossless files partly tracks image content")
    if border is not None and border >= NOTABLE:
        parts.append(f"from the image border alone (the central {CENTRAL_FIELD:.0%} blanked: AUROC {border:.2f})")
        level = max(level, 2 if border >= STRONG else 1)
        kinds.add("border")
    if not parts: return None, 0, kinds
    text = f"{cls} is predictable " + " and ".join(parts)
    if full_auc is not None and level == 2: text += f": this model's {full_auc:.2f} need not come from the lungs"
    return text + ".", level, kinds


def advice(kinds):
    "What to train with against the kinds of shortcut found, and what no option fixes."
    if not kinds: return None
    options = "; ".join(dict.fromkeys(option for k in MITIGATION if k in kinds for option in MITIGATION[k]))  # once each
    return (f"To train past it: {options}; then `audit RUN_DIR`, and score the model where COVID-19 and normal come "
            "from the same hospitals (`--within-hospital DIR`; a pair of sources, one per class, is told apart by the "
            "source and proves nothing). No option fixes a class that comes from one source only: that needs each "
            "class from several sources (`recipe covid-multisource`) or from the same hospitals.")


def verdict(file_facts, sources=None, pixel=None, gradcam=None, full_auc=None, counterfactual=None):
    """{"level": "shortcut"|"warning"|"none", "findings": [sentences], "text": one paragraph}. full_auc: {class:
    AUROC} of the model the verdict speaks of (a run's own test figures, or the full-image probe); counterfactual:
    a run's acquisition counterfactual (counterfactual.py)."""
    findings, level, kinds = [], 0, set()
    classes = list((file_facts or {}).get("auroc") or ((pixel or {}).get("full") or {}).get("auroc") or {})
    for cls in classes:
        text, lv, found = class_findings(cls, file_facts or {}, pixel, _auc(full_auc, cls))
        if text: findings.append(text)
        level, kinds = max(level, lv), kinds | found
    for warning in (sources or {}).get("warnings", []):
        findings.append(warning if warning.endswith(".") else warning + ".")
        level, kinds = max(level, 1), kinds | {"sources"}
    if gradcam and gradcam.get("outside_share") is not None and gradcam.get("note") is None:
        out, uniform = gradcam["outside_share"], gradcam["uniform_share"]
        if out >= uniform + LOOKS_OUTSIDE:
            findings.append(f"The model's Grad-CAM puts {out:.0%} of its mass outside the central field "
                            f"(a uniform map: {uniform:.0%}): it looks at the border.")
            level, kinds = max(level, 1), kinds | {"border"}
    moved, lv = counterfactual_finding(counterfactual)
    if moved: findings.append(moved); level, kinds = max(level, lv), kinds | {"acquisition"}
    if level == 0:  # nothing but content-mixed notes, or nothing at all
        notes = " ".join(findings)
        best_acq = max((v for v in ((file_facts or {}).get("acquisition") or {}).get("auroc", {}).values()
                        if v is not None), default=None)
        text = ("No shortcut found by these tests" + (f" (file facts: AUROC at most {best_acq:.2f})" if best_acq else "") +
                ". That does not make the model free of shortcuts: only these tests found none; evaluate it on "
                "another source (`evaluate`)." + (f" Note: {notes}" if notes else ""))
        return {"level": "none", "findings": findings, "text": text, "advice": None}
    names = {2: "shortcut", 1: "warning"}
    return {"level": names[level], "findings": findings, "text": " ".join(findings), "advice": advice(kinds)}


# ---- audit.md ---------------------------------------------------------------------------------

def file_facts_lines(ff):
    if not ff: return []
    if ff.get("error"): return ["## File facts", "", f"Not run: {ff['error']}", ""]
    classes = list(ff.get("auroc") or {})
    def shown(auroc, ci, c):
        auc = _auc(auroc, c)
        return "too few images to tell" if c in (ff.get("too_few") or []) else (
            fmt(auc) if auc is None else _with_interval(auc, ci, c).removeprefix("AUROC "))
    rows = [[c, shown(ff["acquisition"]["auroc"], ff["acquisition"].get("ci"), c), shown(ff["auroc"], ff.get("ci"), c),
             ", ".join(f"{f} {fmt(a, 2)}" for f, a in (ff.get("top_facts") or {}).get(c, [])[:3])] for c in classes]
    lines = ["## File facts (headers only)", "",
             f"A gradient-boosted classifier on what is not image content, {ff.get('folds')}-fold cross-validation "
             f"grouped by patient, over {ff['counts']['images']} images ({ff['counts'].get('dicom', 0)} DICOM). "
             f"Acquisition facts: format, colour mode, bit depth, width, height, aspect ratio, DICOM tags; "
             f"'all' adds the file size, which for lossless files partly tracks content. Chance is 0.5; in "
             f"brackets the 95% patient-level bootstrap interval, whose lower end the verdict judges.", ""]
    lines += md_table(["class", "AUROC, acquisition facts", "AUROC, all facts", "facts alone (AUROC)"], rows)
    lines += ["", f"Accuracy from acquisition facts {fmt(ff['acquisition'].get('accuracy'))}, from all facts "
                  f"{fmt(ff.get('accuracy'))}; {fmt(ff.get('seconds'), 1)} s."]
    if ff.get("unreadable"):
        lines += ["", f"{len(ff['unreadable'])} files could not be read and were left out:"]
        lines += [f"- {u['path']}: {u['reason']}" for u in ff["unreadable"][:20]]
    return lines + [""]


def sources_lines(src):
    if not src: return []
    lines = ["## Sources", ""]
    if src.get("n_sources", 1) < 2: return lines + [src.get("note") or "One source: nothing to compare.", ""]
    counts = src.get("label_by_source") or {}
    names = sorted({s for row in counts.values() for s in row})
    lines += md_table(["class", *names], [[c, *(str(row.get(s, 0)) for s in names)] for c, row in counts.items()])
    if src.get("auroc"):
        lines += ["", "How well the file facts tell the sources apart (AUROC per source): " +
                  ", ".join(f"{s} {fmt(a, 2)}" for s, a in src["auroc"].items()) + "."]
    lines += [f"- {w}" for w in src.get("warnings", [])]
    return lines + [""]


def pixel_lines(pixel):
    if not pixel: return []
    if pixel.get("error"): return ["## Pixel shortcuts", "", f"Not run: {pixel['error']}", ""]
    classes = list((pixel.get("full") or {}).get("auroc") or {})
    cfg = pixel.get("config") or {}
    probes = ("full", "border_only", "center_only")
    rows = [[c, *(fmt(_auc(pixel[p]["auroc"], c)) for p in probes)] for c in classes]
    rows.append(["accuracy", *(fmt(pixel[p].get("accuracy")) for p in probes)])
    lines = ["## Pixel shortcuts", "",
             f"One short training configuration ({cfg.get('arch')}, {'pretrained' if cfg.get('pretrained') else 'from scratch'}, "
             f"{cfg.get('size')} px, plan {cfg.get('plan') or str(cfg.get('epochs')) + ' epochs'}) on the whole image, "
             f"on the border only (the central {CENTRAL_FIELD:.0%} of width and height blanked) and on the central "
             f"field only, scored on the same held-out patients: the {pixel.get('split')} split "
             f"({(pixel.get('full') or {}).get('n')} images).", ""]
    lines += md_table(["AUROC", "full image", "border only", "central field only"], rows)
    if pixel.get("split") == "valid":
        lines += ["", "There is no test split: the probes are scored on the validation split."]
    return lines + [""]


def gradcam_lines(gc):
    if not gc: return []
    if gc.get("error"): return ["## Where the model looks", "", f"Not run: {gc['error']}", ""]
    lines = ["## Where the model looks", "",
             f"Share of Grad-CAM mass outside the central field over {gc['n']} images of the {gc.get('split')} split: "
             f"{fmt(gc.get('outside_share'))} (a uniform map: {fmt(gc.get('uniform_share'))})."]
    if gc.get("note"): lines.append(f"Note: {gc['note']}.")
    return lines + [""]


def render(result):
    "audit.md: verdict first, then each test's table, then what the audit could not do."
    v = result["verdict"]
    lines = [f"# Shortcut audit: {result.get('subject')}", "", f"**Verdict ({v['level']})**: {v['text']}", ""]
    if v.get("advice"): lines += [v["advice"], ""]
    if result.get("run"): lines += ["Model of the run: AUROC per class " + ", ".join(
        f"{c} {fmt(a, 2)}" for c, a in (result["run"].get("auroc") or {}).items()) + f" ({result['run']['split']} split).", ""]
    lines += file_facts_lines(result.get("file_facts")) + sources_lines(result.get("sources"))
    lines += pixel_lines(result.get("pixel")) + gradcam_lines(result.get("gradcam"))
    lines += counterfactual_lines(result.get("counterfactual"))
    if result.get("limitations"):
        lines += ["## Limitations of this audit", ""] + [f"- {x}" for x in result["limitations"]] + [""]
    lines += [f"Thresholds: AUROC >= {NOTABLE} from a shortcut alone is a warning, >= {STRONG} a shortcut; "
              f"the central field is the middle {CENTRAL_FIELD:.0%} of width and height (images.CENTRAL_FIELD).", ""]
    return "\n".join(lines)
