"""What `predict` reads: image files, folders (recursive), globs and CSVs with a `path` column, expanded to one list
of paths (and the files in folders that are not images); file stems made unique for per-image outputs."""
import glob
import os
from pathlib import Path

import pandas as pd

from ..core.errors import CxrError
from ..data.images import IMAGE_SUFFIXES, is_dicom_file

GLOB_CHARS = set("*?[")


def _folder_images(folder):
    "Image files under `folder` (recursive, sorted; hidden files skipped) and the other files found."
    images, skipped = [], []
    for p in sorted(Path(folder).rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts): continue
        if p.is_symlink() and not p.exists():  # a loop or a dangling link: an error row naming it, not silence
            images.append(str(p))
            continue
        if not p.is_file(): continue
        if p.suffix.lower() in IMAGE_SUFFIXES or (p.suffix == "" and is_dicom_file(p)): images.append(str(p))
        else: skipped.append(str(p))
    return images, skipped


def _csv_paths(csv_path):
    "The `path` column of a CSV, relative paths resolved against the CSV's folder."
    try:
        df = pd.read_csv(csv_path, dtype={"path": str}, keep_default_na=False)
    except Exception as e:
        raise CxrError(f"{csv_path}: cannot read CSV ({type(e).__name__}: {e})") from None
    if "path" not in df.columns:
        raise CxrError(f"{csv_path}: a CSV of inputs needs a 'path' column; it has {', '.join(map(str, df.columns))}")
    base = Path(csv_path).parent
    return [str(p) if Path(p).is_absolute() else str(base / p) for p in df["path"].astype(str)]


def collect_inputs(inputs):
    """(paths, skipped): image paths from files, folders (recursive), globs and CSVs with a `path` column.

    Files named directly are kept whatever their type (an unreadable one gets an error row); in
    folders, files without an image suffix (or DICM marker) are skipped and returned as `skipped`."""
    if isinstance(inputs, (str, os.PathLike)): inputs = [inputs]
    paths, skipped = [], []
    for item in inputs:
        item = str(item)
        path = Path(item).expanduser()
        if path.is_dir():
            found, other = _folder_images(path)
            paths += found
            skipped += other
        elif path.suffix.lower() == ".csv" and path.is_file():
            paths += _csv_paths(path)
        elif not path.exists() and GLOB_CHARS & set(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches: raise CxrError(f"no files match {item!r}")
            for m in matches:
                if Path(m).is_dir():
                    found, other = _folder_images(m)
                    paths += found
                    skipped += other
                else:
                    paths.append(m)
        else:
            paths.append(str(path))  # a missing file becomes an error row naming it
    return paths, skipped


def unique_stems(paths):
    "File stems, made unique with a counter where two files share one."
    seen, out = {}, []
    for p in paths:
        stem = Path(p).stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out
