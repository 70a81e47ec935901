"""The canonical table every source produces and every DataBlock consumes (see docs/DESIGN.md)."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..core.errors import DataError
from ..core.machine import default_workers
from ..core.jsonio import write_atomic
from .guards import safe_input_warnings, warning_problems
from .images import inspect_decoded
from .labels import classes_of, is_multilabel, label_strings, map_classes, parse_class_map
from .rows import SPLITS, problem
from .sources import get_source

NEAR_DUPLICATE_BITS = 4  # dhash Hamming distance (of 256) at or under which two images count as near duplicates


def _stratify_key(df):
    return label_strings(df).to_numpy()


def carve_split(df, pool_mask, name, pct, seed):
    "Move about `pct` of the rows in `pool_mask` to split `name`, whole patients at a time, stratified."
    if pct <= 0: return df
    pool = df[pool_mask]
    n_groups = pool["patient_id"].nunique()
    n_splits = max(2, int(round(1 / pct)))
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} patients to split {pct:.0%} off for '{name}'; "
                        f"lower --valid-pct/--test-pct or add data")
    y = _stratify_key(pool)
    # classes with fewer members than folds only warn in scikit-learn; that is fine here
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        try:
            _, held = next(sgkf.split(np.zeros(len(pool)), y, groups=pool["patient_id"].to_numpy()))
        except ValueError as e:
            raise DataError(f"cannot split {pct:.0%} off for '{name}' by patient ({e}); "
                            f"lower --valid-pct/--test-pct or add data") from None
    df = df.copy()
    df.loc[pool.index[held], "split"] = name
    return df


def assign_splits(df, valid_pct=0.2, test_pct=0.0, seed=42):
    """Fill in `split` by patient: a source-given test/valid split is kept; rows with no split
    (or `train`) are the pool from which test (if the source has none) and then valid are carved."""
    df = df.copy()
    if "split" not in df.columns: df["split"] = "train"
    df["split"] = df["split"].fillna("train").astype(str)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad: raise DataError(f"unknown split names {bad}; use {', '.join(SPLITS)}")
    if test_pct > 0 and not (df["split"] == "test").any():
        df = carve_split(df, df["split"] == "train", "test", test_pct, seed)
    if valid_pct > 0 and not (df["split"] == "valid").any():
        df = carve_split(df, df["split"] == "train", "valid", valid_pct / (1 - (df["split"] == "test").mean()), seed)
    return df


def shared_patients(df):
    "Problems for every patient whose images fall in more than one split (leakage)."
    splits = df.groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    return [problem("shared_patient", None, f"patient {pid} is in {', '.join(s)}") for pid, s in splits.items() if len(s) > 1]


def hash_rows(hashes):
    "dhash bytes (images.dhash) as rows of uint64 words, for Hamming distances."
    return np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(len(hashes), -1)


def hash_distances(rows, row):
    "Hamming distance in bits between each of `rows` (hash_rows) and one `row`."
    return np.bitwise_count(np.bitwise_xor(rows, row)).sum(axis=-1)


def near_duplicate_pairs(df, hashes, max_bits=NEAR_DUPLICATE_BITS):
    "Pairs (i, j), i < j, of row positions in different splits whose hashes differ by at most `max_bits`."
    h = hash_rows(hashes)
    split = df["split"].to_numpy()
    pairs = []
    for i in range(len(h) - 1):
        dist = hash_distances(h[i + 1:], h[i])
        close = np.nonzero((dist <= max_bits) & (split[i + 1:] != split[i]))[0] + i + 1
        pairs += [(i, int(j)) for j in close]
    return pairs


def check_images(paths, want_hash=False, workers=None):
    """Inspect every image once in parallel: list of (problem or None, hash or None, input warnings str), the
    warnings from the input guard (guards.py) on the same decode ('' when the image looks like a chest X-ray)."""
    workers = workers or default_workers(per_core=2, cap=8)  # I/O-bound: two threads per usable core
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: inspect_decoded(p, want_hash, safe_input_warnings), paths))


def drop_unreadable(df, want_hash=False):
    """Drop rows whose image cannot be decoded; returns (table, problems, hashes of the kept rows). Images the input
    guard flags are kept, each counted as an `input_warning` problem."""
    results = check_images(df["path"].tolist(), want_hash)
    ok = np.array([r[0] is None for r in results], dtype=bool)
    problems = [problem("unreadable", p, r[0]) for p, r in zip(df["path"], results) if r[0] is not None]
    problems += warning_problems(df["path"], [r[2] or "" for r in results])
    hashes = [r[1] for r, k in zip(results, ok) if k]
    return df[ok].reset_index(drop=True), problems, hashes


def build_table(source, root, task, *, valid_pct=0.2, test_pct=0.0, seed=42, check=True,
                dedup="warn", classes=None, **options):
    """Build the canonical table for `task` of `source` under `root`.

    dedup: 'warn' reports near-duplicate images across splits, 'drop' also removes the later copy,
    'off' skips hashing. classes: a class mapping for single-label tasks, 'A->X,B->X,C'."""
    mod = get_source(source)
    if task not in mod.TASKS:
        raise DataError(f"unknown task {task!r} for source {source}; choose one of: {', '.join(mod.TASKS)}")
    if dedup not in ("warn", "drop", "off"): raise DataError(f"--dedup must be warn, drop or off, got {dedup!r}")
    root = Path(root).expanduser()
    if not root.exists() and not getattr(mod, "GENERATES_DATA", False):
        raise DataError(f"data root {root} does not exist; see `python -m cxr_fast download --help`")
    df, problems, vocab = mod.load(root.resolve(), task, seed=seed, **options)
    df = df.reset_index(drop=True)
    multilabel = "label" not in df.columns
    mapping = parse_class_map(classes)
    if mapping:
        if multilabel: raise DataError("--classes maps single-label classes; it does not apply to a multi-label task")
        df, vocab = map_classes(df, mapping, vocab)
    check_class_count(task, vocab, multilabel)
    if not multilabel:
        unknown = ~df["label"].isin(vocab)
        problems += [problem("unknown_label", p, f"label {l!r} is not one of {vocab}; row dropped")
                     for p, l in zip(df.loc[unknown, "path"], df.loc[unknown, "label"])]
        df = df[~unknown].reset_index(drop=True)
    hashes = None
    if check:
        df, bad, hashes = drop_unreadable(df, want_hash=dedup != "off")
        problems += bad
    if df.empty: raise DataError(f"no usable images for task {task} under {root}")
    df = assign_splits(df, valid_pct, test_pct, seed)
    problems += shared_patients(df)
    if hashes is not None and dedup != "off":
        pairs = near_duplicate_pairs(df, hashes)
        problems += [problem("near_duplicate", df.at[i, "path"], f"looks like {df.at[j, 'path']} "
                             f"({df.at[i, 'split']} vs {df.at[j, 'split']})") for i, j in pairs]
        if dedup == "drop" and pairs:
            df = df.drop(index=sorted({max(i, j) for i, j in pairs})).reset_index(drop=True)
    problems += absent_classes(df, vocab, multilabel)
    df.attrs.update(task=task, classes=list(vocab), multilabel=multilabel, source=source, problems=problems,
                    split_method=f"by patient, stratified, seed {seed}")
    return df


def check_class_count(task, classes, multilabel):
    "Tasks named binary/3class/4class promise a number of classes: say so when the data does not give it."
    want = {"binary": 2, "3class": 3, "4class": 4}.get(task)
    if want and not multilabel and len(classes) != want:
        raise DataError(f"task {task} needs {want} classes, found {classes}; pick or merge them with --classes "
                        f"(e.g. --classes 'Covid-19,No_findings' or 'COVID-19->Infected,Pneumonia->Infected,Normal')")


def absent_classes(df, classes, multilabel):
    "Warnings for classes with no example in a split that exists."
    out = []
    for split in SPLITS:
        part = df[df["split"] == split]
        if part.empty: continue
        present = {c for c in classes if part[c].sum() > 0} if multilabel else set(part["label"])
        out += [problem("class_absent", None, f"class {c} has no images in the {split} split")
                for c in classes if c not in present]
    return out


def concat_tables(tables):
    "Concatenate tables of several sources with one shared vocabulary (union, first-seen order)."
    if not tables: raise DataError("no tables to concatenate")
    multilabel = {is_multilabel(t) for t in tables}
    if len(multilabel) > 1: raise DataError("cannot mix single-label and multi-label tables")
    vocab = list(dict.fromkeys(c for t in tables for c in classes_of(t)))
    out = pd.concat(distinct_sources(tables), ignore_index=True)
    if multilabel.pop():
        for c in vocab: out[c] = out[c].fillna(0).astype(int)
    out["patient_id"] = out["source"].astype(str) + ":" + out["patient_id"].astype(str)
    out.attrs = dict(tables[0].attrs, classes=vocab, source="+".join(str(t.attrs.get("source")) for t in tables),
                     problems=[p for t in tables for p in t.attrs.get("problems", [])])
    return out


def distinct_sources(tables):
    """The tables with a source name that another table already uses suffixed (`data`, `data-2`), so that rows of
    two roots never look like one source and their patient ids (prefixed by source) never collide."""
    seen, out = set(), []
    for t in tables:
        names = t["source"].astype(str) if "source" in t.columns else pd.Series(str(t.attrs.get("source")), t.index)
        taken = {n: n for n in names.unique()}
        for n in taken:
            k = 2
            while taken[n] in seen: taken[n], k = f"{n}-{k}", k + 1
        seen.update(taken.values())
        out.append(t.assign(source=names.map(taken)))
    return out


def summarize(df):
    "Class counts per split (rows: classes in vocabulary order; columns: splits present)."
    classes = classes_of(df)
    splits = [s for s in SPLITS if (df["split"] == s).any()]
    if is_multilabel(df):
        counts = pd.DataFrame({s: df.loc[df["split"] == s, classes].sum() for s in splits}).reindex(classes)
    else:
        counts = pd.crosstab(df["label"], df["split"]).reindex(index=classes, columns=splits)
    counts = counts.fillna(0).astype(int)
    counts.loc["total images"] = [int((df["split"] == s).sum()) for s in splits]
    counts.loc["patients"] = [int(df.loc[df["split"] == s, "patient_id"].nunique()) for s in splits]
    return counts


def format_problems(problems, limit=None):
    "Human-readable lines, grouped by kind."
    lines = []
    kinds = list(dict.fromkeys(p["kind"] for p in problems))
    for kind in kinds:
        items = [p for p in problems if p["kind"] == kind]
        lines.append(f"{kind}: {len(items)}")
        shown = items if limit is None else items[:limit]
        lines += [f"  {p['path'] + ': ' if p['path'] else ''}{p['detail']}" for p in shown]
        if len(shown) < len(items): lines.append(f"  ... and {len(items) - len(shown)} more")
    return lines


def write_table(df, path):
    "Write the table as CSV, and its attrs (classes, task, problems) beside it as JSON."
    path = Path(path)
    write_atomic(path, lambda p: df.to_csv(p, index=False))
    meta = {k: v for k, v in df.attrs.items()}
    write_atomic(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
    return path


def read_table(path):
    "Read a table written by `write_table` (or any CSV with the canonical columns) and check it."
    path = Path(path)
    if not path.is_file(): raise DataError(f"table {path} does not exist")
    df = pd.read_csv(path, dtype={"patient_id": str, "label": str})
    meta_path = path.with_suffix(".json")
    if meta_path.is_file(): df.attrs.update(json.loads(meta_path.read_text()))
    return validate_table(df, str(path))


def validate_table(df, name="table"):
    "Check the canonical columns and values; raise DataError naming the first bad row."
    missing = [c for c in ("path", "patient_id", "split") if c not in df.columns]
    if missing: raise DataError(f"{name}: missing column(s) {missing}; a table needs path, patient_id, split and labels")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise DataError(f"{name}: row {i} has split {df['split'].iloc[i]!r}; use one of {', '.join(SPLITS)}")
    if not is_multilabel(df) and df["label"].isna().any():
        raise DataError(f"{name}: row {int(np.argmax(df['label'].isna().to_numpy()))} has no label")
    if not classes_of(df): raise DataError(f"{name}: no label column(s) found")
    if "source" not in df.columns: df["source"] = df.attrs.get("source", "table")
    return df
