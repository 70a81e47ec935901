"""Class imbalance in training: subsampling the majority class, sampling weights (by class, by source) and per-class
loss weights."""
from ..core.args import as_list
from ..core.errors import CxrError
from ..data.labels import classes_of, is_multilabel, label_strings, subsample_class
from .losses import inverse_frequency_weights


def subsample_majority_train(table, fraction, seed=42):
    "Keep `fraction` of the majority class's train patients (labels.subsample_class); valid and test untouched."
    table = table.reset_index(drop=True)
    train = table[table["split"] == "train"]
    majority = label_strings(train).value_counts().idxmax()
    kept = subsample_class(train, majority, fraction, seed)
    out = table[(table["split"] != "train") | table.index.isin(kept.index)].reset_index(drop=True)
    out.attrs = {**table.attrs, "subsampled": {"class": majority, "fraction": fraction}}
    return out


def sampling_weights(table, by_class=True, by_source=False):
    """Sampling weights, one per train row (in table order, as `blocks.get_dls(weights=)` takes them), or None
    when neither is asked for. by_class: inverse to the frequency of the row's class in train (multi-label: of its
    label combination); by_source: each source weighs the same within a class (a class's rows of a source share
    1 / (that count x the class's number of sources)), so that which source an image came from tells less."""
    if not (by_class or by_source): return None
    train = table[table["split"] == "train"]
    labels = label_strings(train)
    class_size = labels.map(labels.value_counts()).astype(float)
    weights = 1.0 / class_size if by_class else class_size.map(lambda _: 1.0)
    if by_source:
        pair = labels + "\x00" + train["source"].astype(str)
        per_pair = pair.map(pair.value_counts()).astype(float)
        sources_per_class = labels.map(train.groupby(labels)["source"].nunique()).astype(float)
        weights = weights * class_size / (per_pair * sources_per_class)  # a class keeps its total weight
    return weights.to_numpy(dtype=float)


def class_weight_values(table, class_weights):
    "Per-class loss weights in vocabulary order: 'auto' (inverse train frequency, mean 1), a list or {class: w}."
    if class_weights is None: return None
    classes = classes_of(table)
    if class_weights == "auto":
        if is_multilabel(table): raise CxrError("--class-weights applies to single-label tasks only")
        counts = table.loc[table["split"] == "train", "label"].value_counts().reindex(classes, fill_value=0)
        return [round(float(w), 6) for w in inverse_frequency_weights(counts.tolist())]
    if isinstance(class_weights, dict):
        unknown = set(class_weights) - set(classes)
        if unknown: raise CxrError(f"--class-weights names {sorted(unknown)}, not among the classes {classes}")
        return [float(class_weights.get(c, 1.0)) for c in classes]
    values = as_list(class_weights, "class-weights", float)
    if len(values) != len(classes):
        raise CxrError(f"--class-weights needs {len(classes)} numbers (for {', '.join(classes)}) or 'auto'")
    return values


