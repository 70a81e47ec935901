"""Within-hospital evaluation: COVID-19 against Normal where both classes come from the same hospitals.

A pair of collections, one per class (Hannover's COVID-19 against Montgomery's normals, or unseen COVID-19 against
CoronaHack's pediatric normals), is separated by the collection as well as by the disease, so a model that learned
the hospital scores high on it. The test a shortcut cannot pass has both classes from the same hospitals, none of
it in training: `external_hospitals/` (Actualmed and Figure1, `COVID-19/`, `Normal/`, `Pneumonia/` folders), read
here for evaluation only. It is small: every AUROC comes with its bootstrap interval (by image: no patient ids).

    result = within_hospital(predictor, "../shared/data/external_hospitals")
    result["auroc"], result["ci"], result["normals_called_covid"], result["hospitals"]["Actualmed"]
    called_covid(predictor, "../shared/data/montgomery/images/Normal")   # adult normals of another hospital
"""
import re
from pathlib import Path

import numpy as np

from ..core.errors import CxrError
from ..data.labels import is_normal_class
from ..inference.inputs import collect_inputs
from .markdown import fmt, md_table
from .metrics import N_BOOT, bootstrap_ci, weighted_auc

HOSPITALS = {"Actualmed": re.compile(r"^(CR|DX)\."), "Figure1": re.compile(r"^COVID-")}  # by file name
COVID, NORMAL = "COVID-19", "Normal"  # the folder names of the evaluation set


def hospital_of(path):
    "The hospital of an external_hospitals file, by its name (Actualmed: CR.*/DX.*; Figure1: COVID-*), else 'other'."
    return next((h for h, pattern in HOSPITALS.items() if pattern.match(Path(path).name)), "other")


def is_covid_class(name):
    "True for a model class that means COVID-19 (Covid-19, COVID-19, covid19, ...)."
    return re.sub(r"[^a-z0-9]", "", str(name).lower()) in ("covid19", "covid")


def model_class(classes, test, what):
    "The index of the one model class that `test` accepts, or an error naming the model's classes."
    found = [i for i, c in enumerate(classes) if test(c)]
    if len(found) != 1: raise CxrError(f"within-hospital evaluation needs one {what} class; the model has {classes}")
    return found[0]


def images_in(folder):
    "The image files under `folder` as predict finds them in a folder (none when it does not exist)."
    return collect_inputs([folder])[0] if Path(folder).is_dir() else []


def model_probs(predictor, paths, bs=32):
    "(probabilities (N, C), the COVID-19 class's index, the Normal class's index or None) as predict gives them."
    classes = [str(c) for c in predictor.meta["classes"]]
    covid = model_class(classes, is_covid_class, "COVID-19")
    normal = [i for i, c in enumerate(classes) if is_normal_class(c)]
    probs = predictor.predict_proba(list(paths), batch_size=bs)[0].astype(float)
    return probs, covid, normal[0] if len(normal) == 1 else None


def covid_scores(predictor, paths, bs=32):
    "(P(COVID-19), whether COVID-19 is the predicted class) per path; NaN / False for a file that could not be read."
    probs, covid, _ = model_probs(predictor, paths, bs)
    return probs[:, covid], probs.argmax(axis=1) == covid


def auroc_with_ci(positive, scores, n_boot=N_BOOT, seed=0):
    "{'auroc', 'ci', 'n_pos', 'n_neg'}: AUROC with its image-level percentile bootstrap interval (None when undefined)."
    positive = np.asarray(positive, dtype=bool)
    out = {"n_pos": int(positive.sum()), "n_neg": int((~positive).sum()), "auroc": None, "ci": None}
    if not (out["n_pos"] and out["n_neg"]): return out
    out["auroc"] = weighted_auc(scores, positive)
    if n_boot:
        out["ci"] = bootstrap_ci(lambda w: {"auroc": weighted_auc(scores, positive, w)}, np.arange(len(scores)),
                                 n_boot, seed)["auroc"]
    return out


def within_hospital(predictor, root, n_boot=N_BOOT, seed=0, bs=32):
    """COVID-19 vs Normal on ROOT/COVID-19 and ROOT/Normal: AUROC of P(COVID-19) with its interval, overall and per
    hospital; the share of the normals called COVID-19 (its predicted class) and of the COVID-19 images called so;
    `not_normal`: the same AUROC by 1 - P(Normal) (sick against healthy, whichever disease the model names)."""
    root = Path(root)
    covid, normal = images_in(root / COVID), images_in(root / NORMAL)
    if not (covid and normal):
        raise CxrError(f"{root}: a within-hospital set needs images under {root / COVID} and {root / NORMAL}")
    paths = np.array(covid + normal)
    positive = np.arange(len(paths)) < len(covid)
    probs, covid_index, normal_index = model_probs(predictor, paths, bs)
    scores, called = probs[:, covid_index], probs.argmax(axis=1) == covid_index
    ok = np.isfinite(scores)
    paths, positive, scores, called, probs = paths[ok], positive[ok], scores[ok], called[ok], probs[ok]
    hospital = np.array([hospital_of(p) for p in paths])
    result = {**auroc_with_ci(positive, scores, n_boot, seed), "root": str(root), "unreadable": int((~ok).sum()),
              # by 1 - P(Normal): whether the model tells the sick from the healthy there, COVID-19 or not
              "not_normal": None if normal_index is None else auroc_with_ci(positive, 1 - probs[:, normal_index],
                                                                            n_boot, seed),
              "normals_called_covid": float(called[~positive].mean()), "covid_called_covid": float(called[positive].mean()),
              "ci_method": f"95% percentile bootstrap by image, {n_boot} resamples, seed {seed}", "hospitals": {}}
    for name in dict.fromkeys(hospital):
        mine = hospital == name
        result["hospitals"][name] = {**auroc_with_ci(positive[mine], scores[mine], n_boot, seed),
                                     "normals_called_covid": float(called[mine & ~positive].mean())
                                     if (mine & ~positive).any() else None}
    return result


def called_covid(predictor, folder, bs=32):
    "{'share', 'n'}: how many images under `folder` (e.g. adult normals of a hospital not in training) are called COVID-19."
    paths = images_in(folder)
    if not paths: raise CxrError(f"no images under {folder}")
    scores, called = covid_scores(predictor, paths, bs)
    ok = np.isfinite(scores)
    return {"share": float(called[ok].mean()), "n": int(ok.sum()), "folder": str(folder)}


def find_within_hospital_set(data_root):
    "The external_hospitals folder beside a dataset folder (ROOT/external_hospitals or ROOT/../external_hospitals)."
    for candidate in (Path(data_root) / "external_hospitals", Path(data_root).parent / "external_hospitals"):
        if (candidate / COVID).is_dir() and (candidate / NORMAL).is_dir(): return candidate
    return None


def with_interval(entry):
    "'0.581 [0.440, 0.710]' for an {'auroc', 'ci'} entry."
    ci = entry.get("ci")
    return fmt(entry.get("auroc")) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def within_hospital_lines(result, heading="##"):
    "Markdown for a report or a model card: the within-hospital figures, and what they are."
    rows = [["all", f"{result['n_pos']} / {result['n_neg']}", with_interval(result), fmt(result["normals_called_covid"])]]
    rows += [[name, f"{h['n_pos']} / {h['n_neg']}", with_interval(h), fmt(h.get("normals_called_covid"))]
             for name, h in result["hospitals"].items()]
    return [f"{heading} Within-hospital evaluation (COVID-19 and Normal from the same hospitals)", "",
            f"`{result['root']}`: hospitals whose COVID-19 and normal X-rays are both in this set and none in "
            "training, the one test here that telling hospitals apart cannot pass (0.5 is chance). "
            f"In brackets: {result['ci_method']}.", "",
            *md_table(["hospitals", "COVID-19 / Normal images", "COVID-19 vs Normal AUROC", "normals called COVID-19"],
                      rows), "",
            *([f"By 1 - P(Normal) instead of P(COVID-19) (the sick against the healthy, whichever disease the model "
               f"names): {with_interval(result['not_normal'])}.", ""] if result.get("not_normal") else [])]
