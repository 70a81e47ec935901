"""Several public collections as one COVID-19 / Normal / Pneumonia table, each collection its own source.

In every single public COVID-19 set a class comes from one collection (DarkCovidNet: COVID-19 from Cohen et al.'s
collection, Normal and Pneumonia from NIH), so "which collection" is the cheapest feature for the class. Training on
several collections for each class, sampled so that each collection weighs the same within its class
(`--balance-sources`), leaves fewer such features to learn. ROOT is laid out as `../shared/data`:

    ROOT/darkcovidnet/{Covid-19,No_findings,Pneumonia}/   Cohen et al. (many hospitals) + NIH ChestX-ray8 adults
    ROOT/coronahack/ (Kaggle layout)                      Guangzhou pediatric Normal / Pneumonia
    ROOT/hannover/COVID-19/                               Hannover Medical School adults
    ROOT/montgomery/images/Normal/                        Montgomery County adults (Tuberculosis left out)
    ROOT/jsrt/images/Normal/                              JSRT adults (Nodule left out)

ROOT/external_hospitals/ is never read: it is the within-hospital evaluation set (evaluation/hospitals.py).
"""
from dataclasses import dataclass
from pathlib import Path

from ..core.args import as_list
from ..core.errors import DataError
from .rows import problem
from .table import build_table, concat_tables

CLASSES = ("COVID-19", "Normal", "Pneumonia")
EVALUATION_ONLY = "external_hospitals"  # below ROOT, and never part of a training table


@dataclass(frozen=True)
class Collection:
    "One collection under ROOT: its folder, the loader that reads it (data/sources) and how its classes map."
    folder: str
    loader: str
    task: str
    classes: str  # a class map onto CLASSES ('A->X,B'; classes it does not name are left out), None: as named


COLLECTIONS = {
    "darkcovidnet": Collection("darkcovidnet", "folders", "folders", "Covid-19->COVID-19,No_findings->Normal,Pneumonia"),
    # CoronaHack's COVID-19 images are copies of DarkCovidNet's (52 of 52 within a dhash distance of 4,
    # bench/bench_shortcuts.py): with darkcovidnet among the sources they are left out, so each counts once
    "coronahack": Collection("coronahack", "coronahack", "3class", None),
    "hannover": Collection("hannover", "folders", "folders", "COVID-19"),
    "montgomery": Collection("montgomery/images", "folders", "folders", "Normal"),
    "jsrt": Collection("jsrt/images", "folders", "folders", "Normal"),
}
COPIES_OF = {"coronahack": ("darkcovidnet", "COVID-19")}  # source: (the source it copies, the class it copies)


def copies_left_out(name, selected):
    "The class of source `name` whose images are copies of another selected source's (None when it has none)."
    original, copied = COPIES_OF.get(name, (None, None))
    return copied if original in selected else None


def selected_sources(sources):
    "The source names of `sources` (a list or 'a,b'), checked against COLLECTIONS."
    names = as_list(sources, "sources")
    unknown = [n for n in names if n not in COLLECTIONS]
    if unknown: raise DataError(f"--sources: unknown source(s) {', '.join(unknown)}; choose from {', '.join(COLLECTIONS)}")
    if not names: raise DataError(f"--sources is empty; choose from {', '.join(COLLECTIONS)}")
    return names


def single_source_classes(table):
    "Warnings (table problems) for each class whose train images all come from one source."
    train = table[table["split"] == "train"]
    counts = train.groupby("label")["source"].unique()
    return [problem("single_source_class", None, f"class {c} comes from one source only ({s[0]}): the model can "
                    f"learn {s[0]}'s look for {c}") for c, s in counts.items() if len(s) == 1]


VALID_SHARE = 0.25  # the valid split's cap per (source, class), as a share of the train split's


def cap_split(table, split, max_images, seed=42):
    """At most `max_images` images of `split` per (source, class), whole patients drawn at random (other splits
    kept): what keeps a training on every source within its time when one source (CoronaHack: 5,000 images) dwarfs
    the rest, and its valid split from choosing the epoch alone."""
    if not max_images: return table
    rows = table[table["split"] == split]
    kept = []
    for _, part in rows.groupby(["source", "label"], sort=False):
        patients = part["patient_id"].drop_duplicates().sample(frac=1, random_state=seed)
        sizes = part.groupby("patient_id").size().reindex(patients)
        kept += part.index[part["patient_id"].isin(patients[(sizes.cumsum() <= max_images).to_numpy()])].tolist()
    out = table[(table["split"] != split) | table.index.isin(kept)].reset_index(drop=True)
    out.attrs = dict(table.attrs, capped={**table.attrs.get("capped", {}), split: int(max_images)})
    return out


def multisource_table(root, sources=tuple(COLLECTIONS), valid_pct=0.1, test_pct=0.0, seed=42, dedup="warn",
                      max_per_source=None):
    """The canonical table of the `sources` found under `root`: each split by patient where it has patient ids and
    by image where it has none, with its own name as `source` (patient ids kept apart); a source folder missing
    under root is named in one line and left out; max_per_source caps the train images of each (source, class)
    and a quarter of that their valid images (cap_split). attrs: sources (their names and folders), missing_sources."""
    root = Path(root).expanduser()
    names = selected_sources(sources)
    tables, missing = [], []
    for name in names:
        c = COLLECTIONS[name]
        folder = root / c.folder
        if not folder.is_dir():
            print(f"warning: source {name} not found at {folder}; training on the other sources")
            missing.append(name)
            continue
        table = build_table(c.loader, folder, c.task, valid_pct=valid_pct, test_pct=test_pct, seed=seed,
                            classes=c.classes, dedup=dedup)
        copied = copies_left_out(name, names)
        tables.append(table[table["label"] != copied].assign(source=name))
    if not tables:
        raise DataError(f"none of the sources {', '.join(names)} is under {root} (expected e.g. {root / 'darkcovidnet'}); "
                        f"pass --data ROOT laid out as ../shared/data")
    out = concat_tables(tables)
    out = out[out["label"].isin(CLASSES)].reset_index(drop=True)
    out.attrs.update(task="3class", classes=[c for c in CLASSES if c in set(out["label"])],  # problems: concat_tables'
                     source="multisource", sources={n: str(root / COLLECTIONS[n].folder) for n in names
                                                    if n not in missing},
                     missing_sources=missing, split_method=f"each source by patient (by image where it has no patient ids), stratified, "
                                  f"seed {seed}")
    if max_per_source:
        out = cap_split(cap_split(out, "train", max_per_source, seed), "valid", int(max_per_source * VALID_SHARE), seed)
    out.attrs["problems"] += single_source_classes(out)
    return out
