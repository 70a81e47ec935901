"""bench/bench_accuracy.py's folds and result keys (the CV numbers in the README rest on them)."""
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_accuracy as B  # noqa: E402


def nih_like_table():
    "30 patients, 1-3 images each (like NIH file names), two classes."
    rows = [{"path": f"{c}/{p:03d}_{i}.png", "patient_id": f"{c}{p}", "label": c, "source": "folders"}
            for c in ("A", "B") for p in range(15) for i in range(1 + p % 3)]
    return pd.DataFrame(rows)


def test_patient_folds_never_split_a_patient_and_image_folds_do():
    table = nih_like_table()
    folds = list(B.fold_tables(table, 5, 0, by="patient"))
    assert len(folds) == 5 and sorted(i for _, t in folds for i in t.index[t.split == "test"]) == list(table.index)
    for _, t in folds:
        assert not set(t.patient_id[t.split == "test"]) & set(t.patient_id[t.split != "test"])
        assert not set(t.patient_id[t.split == "valid"]) & set(t.patient_id[t.split == "train"])
        assert "by patient" in t.attrs["split_method"]
    shared = [set(t.patient_id[t.split == "test"]) & set(t.patient_id[t.split != "test"])
              for _, t in B.fold_tables(table, 5, 0, by="image")]
    assert any(shared)  # the paper's protocol: the same patient on both sides of a fold
    with pytest.raises(ValueError):
        next(B.fold_tables(table, 5, 0, by="study"))


def test_overrides_and_image_folds_are_kept_under_their_own_key():
    assert B.experiment_key("pretrained:best", {}) == "pretrained:best"
    assert B.experiment_key("pretrained:best", {"tta": True, "arch": "x"}) == "pretrained:best --set arch=x --set tta=true"
    assert B.experiment_key("scratch", {}, "image") == "scratch --folds-by image"
    assert B.json_or_text("2e-3") == 0.002 and B.json_or_text("fp32") == "fp32"


def test_pretrained_experiments_train_one_model_unless_set():
    "A key keeps meaning what it measured: `pretrained:best` is one model, the recipe's ensemble is --set members=3."
    assert B.experiment_config("pretrained:best", "3class", {})["members"] == 1
    assert B.experiment_config("pretrained:best", "3class", {"members": 3})["members"] == 3
