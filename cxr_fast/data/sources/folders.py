"""One folder per class (DarkCovidNet, Khulna), optionally under train/ valid|val/ test/ folders."""
from pathlib import Path

import pandas as pd

from ...core.errors import DataError
from ..images import is_image_file
from ..rows import problem
from .patients import patient_from_filename

TASKS = {
    "folders": "every class folder is a class (use --classes to pick, rename or merge them)",
    "binary": "two classes after --classes (e.g. Covid-19,No_findings)",
    "3class": "three classes after --classes (or exactly three class folders)",
}
SPLIT_DIRS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
LAYOUT_NAMES = {"images", "image", "data", "dataset", "xrays"}  # a folder named so is named by its parent instead


def source_name(root):
    """The name the rows of ROOT carry as their source: its folder's name (`montgomery/images` -> montgomery), so
    two folder roots joined with '+' stay two sources (for --balance-sources, the audit, patient ids)."""
    root = Path(root)
    return root.parent.name if root.name.lower() in LAYOUT_NAMES and root.parent.name else root.name


def split_dirs(root):
    "{split: folder} for a train/valid/test layout, or {None: root} for class folders at the top."
    tops = {SPLIT_DIRS[p.name.lower()]: p for p in Path(root).iterdir() if p.is_dir() and p.name.lower() in SPLIT_DIRS}
    return tops if "train" in tops else {None: Path(root)}


def load(root, task, seed=42):
    "Rows for every image under a class folder; non-image files are reported and skipped."
    rows, problems, name = [], [], source_name(root)
    for split, base in split_dirs(root).items():
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(class_dir.rglob("*")):
                if not f.is_file() or f.name.startswith("."): continue
                if not is_image_file(f):
                    problems.append(problem("not_an_image", f, "skipped: not an image file type cxr_fast reads"))
                    continue
                rows.append({"path": str(f.resolve()), "patient_id": patient_from_filename(f),
                             "split": split, "label": class_dir.name, "source": name})
    if not rows: raise DataError(f"no class folders with images under {root}; expected ROOT/<class>/*.png "
                                 f"or ROOT/train/<class>/*.png")
    df = pd.DataFrame(rows)
    return df, problems, sorted(df["label"].unique())
