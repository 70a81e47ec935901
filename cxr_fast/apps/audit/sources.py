"""Sources: when a table's rows come from several sources, is a class confounded with one of them?

The label x source counts, a warning for each class that comes (nearly) all from one source the other
classes mostly do not come from, and how well the sources can be told apart from file facts alone
(the same patient-grouped cross-validated classifier as file_facts, predicting `source`).
"""
from ...data.labels import classes_of, is_multilabel
from .file_facts import (ACQUISITION_FACTS, CONTENT_FACTS, cross_validated, encoded, patient_groups, read_facts,
                         readable_rows, varying_facts)

ONE_SOURCE_SHARE = 0.9  # a class with at least this share of its images from one source ...
OTHERS_SHARE = 0.5      # ... while under this share of the other classes' images come from it, is confounded


def class_masks(table):
    "{class: boolean Series of its rows} (multi-label: rows where the class is 1)."
    if is_multilabel(table): return {c: table[c] == 1 for c in classes_of(table)}
    labels = table["label"].astype(str)
    return {c: labels == c for c in sorted(labels.unique())}


def source_counts(table, masks):
    "{class: {source: images}}."
    sources = table["source"].astype(str)
    return {c: {s: int(n) for s, n in sources[m].value_counts().sort_index().items()} for c, m in masks.items()}


def one_source_warnings(table, masks):
    "A line for each class whose images come >= ONE_SOURCE_SHARE from a source that supplies few of the others."
    sources = table["source"].astype(str)
    warnings = []
    for c, m in masks.items():
        if not m.any() or m.all(): continue
        shares, others = sources[m].value_counts(normalize=True), sources[~m].value_counts(normalize=True)
        top, share = shares.index[0], float(shares.iloc[0])
        if share >= ONE_SOURCE_SHARE and others.get(top, 0.0) < OTHERS_SHARE:
            warnings.append(f"class {c!r}: {share:.0%} of its images come from source {top!r}, which supplies "
                            f"{others.get(top, 0.0):.0%} of the other classes' images; a model can learn the source")
    return warnings


def source_audit(table, facts=None, folds=5, seed=0):
    """Label x source counts, one-source warnings, and how well file facts tell the sources apart.

    Returns a JSON-able dict: n_sources, sources, label_by_source ({class: {source: n}}), warnings, note, and
    with several sources auroc ({source: AUROC of telling it from the others}), accuracy, folds, limitations.
    `facts` may be a read_facts frame for table.path (read once, shared with file_facts)."""
    if "source" not in table.columns: table = table.assign(source="unknown")
    masks = class_masks(table)
    sources = sorted(table["source"].astype(str).unique())
    out = {"n_sources": len(sources), "sources": sources, "label_by_source": source_counts(table, masks),
           "warnings": [], "note": None}
    if len(sources) < 2:
        out["note"] = f"One source ({sources[0] if sources else 'none'}): nothing to confound the label with."
        return out
    out["warnings"] = one_source_warnings(table, masks)
    facts = read_facts(table["path"]) if facts is None else facts.reset_index(drop=True)
    rows, good = readable_rows(table, facts)
    X, categorical = encoded(good, varying_facts(good, ACQUISITION_FACTS) + varying_facts(good, CONTENT_FACTS))
    out.update(cross_validated(X, categorical, rows["source"].astype(str).to_numpy(), patient_groups(rows), folds, seed))
    return out
