"""Kaggle CoronaHack Chest X-Ray dataset (praveengovi/coronahack-chest-xraydataset), by its own CSV."""
from pathlib import Path

import pandas as pd

from ...core.errors import DataError
from ..rows import problem
from ..labels import subsample_class
from .patients import patient_from_filename

CSV_NAME = "Chest_xray_Corona_Metadata.csv"
COLUMNS = ["X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category", "Label_1_Virus_category"]
TASKS = {
    "normal-vs-pneumonia": "Label: Normal vs Pneumonia (every Pnemonia row, COVID-19 included)",
    "normal-vs-covid": "Normal vs COVID-19 (Label_2_Virus_category); --balance subsamples Normal",
    "3class": "Normal / Pneumonia (not COVID-19) / COVID-19",
    "bacterial-viral": "Normal / bacteria / Virus (Label_1_Virus_category)",
    "multilabel": "0/1 targets COVID-19, Pneumonia, Normal (a COVID-19 image is also Pneumonia)",
}
CLASSES = {
    "normal-vs-pneumonia": ["Normal", "Pneumonia"],
    "normal-vs-covid": ["Normal", "COVID-19"],
    "3class": ["Normal", "Pneumonia", "COVID-19"],
    "bacterial-viral": ["Normal", "bacteria", "Virus"],
    "multilabel": ["COVID-19", "Pneumonia", "Normal"],
}


def find_csv(root):
    "The metadata CSV at `root` or below it (a Kaggle input folder, an unzipped download)."
    root = Path(root)
    if root.is_file() and root.name == CSV_NAME: return root
    found = sorted(root.rglob(CSV_NAME), key=lambda p: len(p.parts))
    if not found:
        raise DataError(f"no {CSV_NAME} under {root}; download it with `python -m cxr_fast download coronahack` "
                        f"or unzip the Kaggle archive there")
    return found[0]


def find_image_dirs(root):
    "{'TRAIN': dir, 'TEST': dir}: the deepest folder holding both `train` and `test` image folders."
    candidates = [p for p in Path(root).rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
    if not candidates:
        raise DataError(f"no train/ and test/ image folders under {root} (Kaggle layout "
                        f"Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/{{train,test}})")
    base = max(candidates, key=lambda p: len(p.parts)).parent
    return {"TRAIN": base / "train", "TEST": base / "test"}


def read_metadata(csv_path):
    "The metadata CSV with its columns checked; empty categories read as ''."
    meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {list(meta.columns)}. "
                        f"Is this the CoronaHack Chest_xray_Corona_Metadata.csv?")
    bad_type = ~meta["Dataset_type"].isin(["TRAIN", "TEST"])
    if bad_type.any():
        i = int(bad_type.to_numpy().argmax())
        raise DataError(f"{csv_path}: row {i + 2} has Dataset_type {meta['Dataset_type'].iloc[i]!r}; expected TRAIN or TEST")
    return meta


def task_labels(meta, task):
    "The label (or 0/1 columns) each CSV row has for `task`; None where the row is outside the task."
    normal = meta["Label"] == "Normal"
    covid = meta["Label_2_Virus_category"] == "COVID-19"
    pneumonia = meta["Label"] == "Pnemonia"  # sic, as in the Kaggle CSV
    if task == "normal-vs-pneumonia":
        return meta["Label"].map({"Normal": "Normal", "Pnemonia": "Pneumonia"}).fillna(meta["Label"])
    if task == "normal-vs-covid":
        return pd.Series(None, index=meta.index, dtype=object).mask(normal, "Normal").mask(covid, "COVID-19")
    if task == "3class":
        out = meta["Label"].map({"Normal": "Normal", "Pnemonia": "Pneumonia"}).fillna(meta["Label"])
        return out.mask(covid, "COVID-19")
    if task == "bacterial-viral":
        v = meta["Label_1_Virus_category"]
        return pd.Series(None, index=meta.index, dtype=object).mask(normal, "Normal").mask(
            pneumonia & (v == "bacteria"), "bacteria").mask(pneumonia & (v == "Virus"), "Virus")
    if task == "multilabel":
        return pd.DataFrame({"COVID-19": covid.astype(int), "Pneumonia": pneumonia.astype(int),
                             "Normal": normal.astype(int)})
    raise DataError(f"unknown task {task!r}")


def load(root, task, seed=42, kaggle_split=True, balance=None):
    """Rows for `task`. kaggle_split: the CSV's TEST rows are the test split (else every row is in the
    pool that test/valid are carved from). balance: keep this fraction of the Normal patients (e.g. 1/22)."""
    csv_path = find_csv(root)
    meta = read_metadata(csv_path)
    dirs = find_image_dirs(csv_path.parent)
    labels = task_labels(meta, task)
    df = pd.DataFrame({
        "path": [str(dirs[t] / n) for t, n in zip(meta["Dataset_type"], meta["X_ray_image_name"])],
        "csv_row": meta.index + 2,  # 1-based line in the CSV, header on line 1
        "patient_id": [f"{t.lower()}/{patient_from_filename(n)}" for t, n in zip(meta["Dataset_type"], meta["X_ray_image_name"])],
        "split": meta["Dataset_type"].map({"TRAIN": "train", "TEST": "test"}) if kaggle_split else "train",
        "orig_label": meta["Label"] + "/" + meta["Label_1_Virus_category"] + "/" + meta["Label_2_Virus_category"],
        "source": "coronahack",
    })
    if isinstance(labels, pd.DataFrame):
        df = pd.concat([df, labels], axis=1)
    else:
        df["label"] = labels
        df = df[df["label"].notna()]
    exists = df["path"].map(lambda p: Path(p).is_file())
    problems = [problem("missing_file", p, f"{csv_path.name} line {r} ({o}) names an image that is not on disk; row excluded")
                for p, r, o in zip(df.loc[~exists, "path"], df.loc[~exists, "csv_row"], df.loc[~exists, "orig_label"])]
    df = df[exists].reset_index(drop=True)
    if balance is not None:
        if "label" not in df.columns: raise DataError("--balance applies to single-label tasks")
        df = subsample_class(df, "Normal", float(balance), seed)
    return df, problems, CLASSES[task]
