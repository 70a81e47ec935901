"""Labels and class names: which class means 'no disease', the positive class of a binary task, a table's class
vocabulary and label strings, and the relabelling of one label space onto another (`--classes`)."""
import pandas as pd

from ..core.errors import DataError
from .rows import META_COLUMNS


NORMAL_NAMES = {"normal", "negative", "no_finding", "no_findings", "healthy", "no_pneumonia", "no_covid", "none"}


def is_normal_class(name):
    "True for the class meaning 'no disease' (Normal, Negative, No_findings, 'Negative for Pneumonia', ...)."
    name = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return name in NORMAL_NAMES or name.startswith("negative_for")


def positive_index(classes):
    "Binary tasks: the index of the disease class (the one that is not Normal/Negative), else the second."
    disease = [i for i, c in enumerate(classes) if not is_normal_class(c)]
    return disease[0] if len(classes) == 2 and len(disease) == 1 else 1


def is_multilabel(df):
    "True for a multi-label table (0/1 columns per class, no `label` column)."
    if "multilabel" in df.attrs: return bool(df.attrs["multilabel"])
    return "label" not in df.columns


def classes_of(df):
    "The class vocabulary in its fixed order: from attrs, else from the columns of a CSV table."
    if df.attrs.get("classes"): return list(df.attrs["classes"])
    if "label" in df.columns: return sorted(df["label"].astype(str).unique())
    return [c for c in df.columns if c not in META_COLUMNS and set(df[c].dropna().unique()) <= {0, 1}]


def label_strings(df):
    "One string per row naming its class (multi-label: the ';'-joined positive labels)."
    if not is_multilabel(df): return df["label"].astype(str)
    classes = classes_of(df)
    return df[classes].apply(lambda r: ";".join(c for c in classes if r[c] == 1) or "none", axis=1)


def check_class_map(mapping, classes):
    "A --classes mapping may only name classes the data has: a one-line error naming the others."
    unknown = [k for k in mapping if k not in set(classes)]
    if unknown: raise DataError(f"--classes names {unknown}, not among this data's classes {classes}")


def relabel(df, mapping):
    """The table with its classes renamed by `mapping` ({old: new}; classes not in it keep their name): the label
    column of a single-label table, the label columns of a multi-label one. The one relabelling: `map_classes`
    (training on a new label space) and evaluation's `onto_model` (scoring data on a model's classes) both use it."""
    if is_multilabel(df): return df.rename(columns=mapping)
    return df.assign(label=df["label"].astype(str).map(lambda c: mapping.get(c, c)))


def map_classes(df, mapping, classes):
    """Rename/merge single-label classes: `mapping` is {old: new}; rows whose class is not in it are
    dropped. Returns (table, new class list in first-seen order of `mapping`)."""
    check_class_map(mapping, classes)
    return relabel(df[df["label"].isin(list(mapping))], mapping), list(dict.fromkeys(mapping.values()))


def parse_class_map(spec):
    """'A->X,B->X,C' -> {'A': 'X', 'B': 'X', 'C': 'C'}; also accepts a dict or list."""
    if spec is None or spec == "": return None
    if isinstance(spec, dict): return {str(k): str(v) for k, v in spec.items()}
    items = list(spec) if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out = {}
    for item in (str(i).strip() for i in items):
        if not item: continue
        old, _, new = item.partition("->")
        out[old.strip()] = (new or old).strip()
    return out


def subsample_class(df, cls, fraction, seed=42):
    "Keep a random `fraction` of class `cls`'s patients in the train pool (test rows untouched)."
    if not 0 < fraction <= 1: raise DataError(f"subsample fraction must be in (0, 1], got {fraction}")
    is_cls = (label_strings(df) == cls) & (df.get("split", pd.Series("train", index=df.index)) != "test")
    patients = df.loc[is_cls, "patient_id"].drop_duplicates()
    keep = set(patients.sample(frac=fraction, random_state=seed))
    return df[~is_cls | df["patient_id"].isin(keep)].copy()
