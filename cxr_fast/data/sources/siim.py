"""SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle competition siim-covid19-detection): DICOMs, study-level labels.

Labels come from `train_study_level.csv` (one-hot over four appearances, per study); images from
`train_image_level.csv` (one row per image, with its StudyInstanceUID), stored on disk at
`train/<study>/<series>/<image>.dcm`. The series folder is found by one walk of `train/`.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..dicom import dicom_header, is_frontal
from ...core.errors import DataError
from ..images import DICOM_SUFFIXES, is_image_file
from ..rows import problem

STUDY_CSV = "train_study_level.csv"
IMAGE_CSV = "train_image_level.csv"
APPEARANCES = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"]
STUDY_COLUMNS = ["id", *APPEARANCES]
IMAGE_COLUMNS = ["id", "boxes", "label", "StudyInstanceUID"]
TASKS = {
    "binary": "Negative for Pneumonia vs Positive (Typical, Indeterminate or Atypical Appearance); "
              "--sample-size draws a class-balanced sample",
    "4class": "the four study-level appearances: Negative / Typical / Indeterminate / Atypical",
}
CLASSES = {"binary": ["Negative", "Positive"], "4class": list(APPEARANCES)}
MULTI_IMAGE = {
    "skip": "drop studies with more than one image (avoids lateral views)",
    "first-frontal": "keep one image per study: the first PA/AP view by ViewPosition, else the first image",
    "all": "keep every image, each with its study's label",
}
MAX_LISTED = 20  # missing files listed one by one; the rest only counted
DOWNLOAD_HINT = ("download with `python -m cxr_fast download siim` or `kaggle competitions download -c "
                 "siim-covid19-detection` (accept the competition rules first) and unzip it there")


def find_csv(root, name):
    "The CSV `name` at `root` or below it (shallowest first)."
    root = Path(root)
    if root.is_file() and root.name == name: return root
    found = sorted(root.rglob(name), key=lambda p: len(p.parts)) if root.is_dir() else []
    if not found: raise DataError(f"no {name} under {root}; {DOWNLOAD_HINT}")
    return found[0]


def read_csv(path, columns):
    "A SIIM CSV as strings, its columns checked."
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read CSV ({e}); re-download it") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
                        f"Is this the SIIM-FISABIO-RSNA {Path(path).name}?")
    return df


def study_labels(csv_path):
    """(DataFrame study_id -> appearance, problems, every study id in the CSV): rows without exactly one 1
    among the four are dropped."""
    df = read_csv(csv_path, STUDY_COLUMNS)
    onehot = df[APPEARANCES].apply(pd.to_numeric, errors="coerce")
    valid = onehot.isin([0, 1]).all(axis=1) & (onehot.sum(axis=1) == 1)
    problems = [problem("unknown_label", csv_path, f"line {i + 2}: study {sid} has {dict(zip(APPEARANCES, row))} "
                        f"(needs exactly one 1 among the four); row dropped")
                for i, sid, row in zip(df.index[~valid], df.loc[~valid, "id"], df.loc[~valid, APPEARANCES].to_numpy())]
    good = df[valid]
    labels = pd.DataFrame({"study_id": good["id"].str.removesuffix("_study").to_numpy(),
                           "appearance": onehot[valid].to_numpy().argmax(axis=1)})
    labels["appearance"] = [APPEARANCES[i] for i in labels["appearance"]]
    return labels.drop_duplicates("study_id"), problems, set(df["id"].str.removesuffix("_study"))


def image_rows(csv_path):
    "train_image_level.csv as (image_id, study_id, csv_line)."
    df = read_csv(csv_path, IMAGE_COLUMNS)
    return pd.DataFrame({"image_id": df["id"].str.removesuffix("_image").to_numpy(),
                         "study_id": df["StudyInstanceUID"].str.strip().to_numpy(),
                         "csv_line": (df.index + 2).to_numpy()})


def index_images(train_dir):
    "{image id (file stem): path} for every image file under `train_dir` (one walk; DICOM wins a tie)."
    found = {}
    for dirpath, dirnames, filenames in os.walk(train_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if not is_image_file(name): continue
            stem, suffix = os.path.splitext(name)
            if stem not in found or suffix.lower() in DICOM_SUFFIXES:
                found[stem] = os.path.join(dirpath, name)
    return found


def read_headers(paths, workers=8):
    "{path: dicom_header dict} for the DICOM files among `paths` (headers only, in threads); unreadable: {}."

    def one(path):
        if Path(path).suffix.lower() not in DICOM_SUFFIXES: return {}
        try:
            return dicom_header(path)
        except DataError:
            return {}  # the table's image check reports the file as unreadable
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def capped(kind, entries, summary_path, summary):
    "Problems of one kind: each of `entries` ((path, detail) pairs) when few, else a summary plus the first MAX_LISTED."
    listed = [problem(kind, p, d) for p, d in entries[:MAX_LISTED]]
    if len(entries) <= MAX_LISTED: return listed
    return [problem(kind, summary_path, f"{len(entries)} {summary} (first {MAX_LISTED} listed)"), *listed]


def missing_problems(missing, train_dir, n_listed):
    "missing_file problems for the CSV images (of `n_listed`) that are not on disk."
    entries = [(f"{train_dir}/{s}/<series>/{i}.dcm", f"{IMAGE_CSV} line {n} names this image; not on disk, "
                f"row excluded") for s, i, n in zip(missing["study_id"], missing["image_id"], missing["csv_line"])]
    return capped("missing_file", entries, train_dir,
                  f"of the {n_listed} labelled images in {IMAGE_CSV} are not on disk; their rows are excluded")


def orphan_problems(orphans, image_csv):
    "unknown_label problems for CSV images whose study is not in the study-level CSV."
    entries = [("", f"{IMAGE_CSV} line {n}: image {i}'s study {s} is not in {STUDY_CSV}; row dropped")
               for s, i, n in zip(orphans["study_id"], orphans["image_id"], orphans["csv_line"])]
    return capped("unknown_label", entries, image_csv,
                  f"images in {IMAGE_CSV} belong to no study in {STUDY_CSV}; rows dropped")


def view_rank(view_position):
    "0 for a frontal view (PA/AP), 1 when unknown, 2 for any other view (lateral)."
    if is_frontal(view_position): return 0
    return 1 if not str(view_position).strip() else 2


def apply_multi_image(df, policy):
    """Apply the multi-image policy to studies whose CSV lists more than one image (`n_listed`).
    Returns (rows kept, problems: one multi_image_study summary)."""
    multi = df["n_listed"] > 1
    n_studies = df.loc[multi, "study_id"].nunique()
    if not n_studies: return df, []
    if policy == "skip":
        kept = df[~multi]
        what = f"policy skip: those studies and their {int(multi.sum())} images were dropped"
    elif policy == "first-frontal":
        order = df.assign(_rank=df["view_position"].map(view_rank), _pos=np.arange(len(df)))
        kept = order.sort_values(["_rank", "_pos"], kind="stable").drop_duplicates("study_id")
        kept = kept.sort_values("_pos").drop(columns=["_rank", "_pos"])
        frontal = int((kept.loc[kept["study_id"].isin(df.loc[multi, "study_id"]), "view_position"]
                       .map(view_rank) == 0).sum())
        what = (f"policy first-frontal: kept one image each ({frontal} chosen as PA/AP by ViewPosition, "
                f"the rest the first listed), dropped {len(df) - len(kept)} images")
    else:
        kept = df
        what = f"policy all: kept all {int(multi.sum())} images, each with its study's label"
    return kept, [problem("multi_image_study", None, f"{n_studies} studies have more than one image; {what}")]


def balanced_sample(df, size, classes, seed):
    "A random sample of `size` rows, split as evenly as possible over `classes`."
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise DataError(f"--sample-size must be a whole number of images, got {size!r}") from None
    if size < len(classes): raise DataError(f"--sample-size must be at least {len(classes)}, got {size}")
    parts = []
    for i, cls in enumerate(classes):
        want = size // len(classes) + (1 if i < size % len(classes) else 0)
        rows = df[df["label"] == cls]
        if len(rows) < want:
            raise DataError(f"--sample-size {size} needs {want} images of class {cls!r} but only {len(rows)} are "
                            f"available; use at most {len(classes) * df['label'].value_counts().min()}")
        parts.append(rows.sample(n=want, random_state=seed))
    return pd.concat(parts).sort_index()


def task_label(appearance, task):
    "The class of a study appearance for `task`."
    if task == "binary": return "Negative" if appearance == APPEARANCES[0] else "Positive"
    if task == "4class": return appearance
    raise DataError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def train_folder(csv_dir):
    "The `train` image folder beside the CSVs and {image id: path} under it; DataError when it holds no image."
    train_dir = (Path(csv_dir) / "train").resolve()
    found = index_images(train_dir) if train_dir.is_dir() else {}
    if not found: raise DataError(f"no SIIM DICOM images found under {train_dir}; {DOWNLOAD_HINT}")
    return train_dir, found


def find_csvs(root):
    "(study-level CSV, image-level CSV) at `root` or below; the image CSV beside the study CSV when there."
    study_csv = find_csv(root, STUDY_CSV)
    image_csv = study_csv.parent / IMAGE_CSV
    return study_csv, (image_csv if image_csv.is_file() else find_csv(root, IMAGE_CSV))


def labelled_images(study_csv, image_csv):
    "(one row per CSV image with its study's appearance and the study's image count `n_listed`, problems)."
    labels, problems, all_studies = study_labels(study_csv)
    images = image_rows(image_csv)
    images["n_listed"] = images.groupby("study_id")["image_id"].transform("size")
    images = images.merge(labels, on="study_id", how="left")
    orphan = images["appearance"].isna()  # study not in the study CSV, or its row was dropped (reported there)
    problems += orphan_problems(images[orphan & ~images["study_id"].isin(all_studies)], image_csv)
    return images[~orphan].reset_index(drop=True), problems


def on_disk(images, found, train_dir):
    "(the images found under train/ with their `path`, missing_file problems); DataError when none is."
    paths, n_listed = images["image_id"].map(found), len(images)
    if paths.isna().all():
        raise DataError(f"none of the {n_listed} labelled images in {IMAGE_CSV} is under {train_dir} (found "
                        f"{len(found)} other image files); is {train_dir.parent} the SIIM competition folder?")
    problems = missing_problems(images[paths.isna()], train_dir, n_listed)
    return images.assign(path=paths)[paths.notna()].reset_index(drop=True), problems


def to_rows(images, headers, task):
    "Canonical rows: patient from the DICOM PatientID, else the study id."
    return pd.DataFrame({
        "path": images["path"].to_numpy(),
        "patient_id": [headers[p].get("PatientID") or s for p, s in zip(images["path"], images["study_id"])],
        "label": [task_label(a, task) for a in images["appearance"]],
        "orig_label": images["appearance"].to_numpy(),
        "study_id": images["study_id"].to_numpy(),
        "image_id": images["image_id"].to_numpy(),
        "view_position": images["view_position"].to_numpy(),
        "source": "siim",
    })


def load(root, task, seed=42, multi_image="first-frontal", sample_size=None):
    """Rows for `task`, one per kept image. multi_image: skip, first-frontal or all (studies with several
    images); sample_size: draw a class-balanced sample of this many images."""
    if task not in TASKS: raise DataError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if multi_image not in MULTI_IMAGE:
        raise DataError(f"--multi-image must be one of {', '.join(MULTI_IMAGE)}, got {multi_image!r}")
    study_csv, image_csv = find_csvs(root)
    images, problems = labelled_images(study_csv, image_csv)
    train_dir, found = train_folder(study_csv.parent)
    images, missing = on_disk(images, found, train_dir)
    headers = read_headers(images["path"].tolist())
    images["view_position"] = [headers[p].get("ViewPosition", "") for p in images["path"]]
    images, multi = apply_multi_image(images, multi_image)
    df = to_rows(images, headers, task)
    if sample_size is not None: df = balanced_sample(df, sample_size, CLASSES[task], seed).reset_index(drop=True)
    return df, problems + missing + multi, list(CLASSES[task])
