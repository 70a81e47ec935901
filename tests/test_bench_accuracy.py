"""bench/bench_accuracy.py's folds and result keys (the CV numbers in the README rest on them)."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_fast.data.table import build_table
from cxr_fast.inference.predictor import load_model
from cxr_fast.training.precision import default_precision
from cxr_fast.training.run import train

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
    assert B.experiment_key("pretrained:best", {"members": 3}, seed=B.SEED) == "pretrained:best --set members=3"
    assert B.experiment_key("pretrained:best", {"members": 3}, seed=7) == "pretrained:best --set members=3 --seed 7"
    assert B.json_or_text("2e-3") == 0.002 and B.json_or_text("fp32") == "fp32"


def test_pretrained_experiments_train_one_model_unless_set():
    "A key keeps meaning what it measured: `pretrained:best` is one model, the recipe's ensemble is --set members=3."
    assert B.experiment_config("pretrained:best", "3class", {})["members"] == 1
    assert B.experiment_config("pretrained:best", "3class", {"members": 3})["members"] == 3


def test_members_curve_is_the_accuracy_of_the_first_k_members(tmp_path):
    "k = N is the ensemble's own accuracy (predict's argmax); k = 1 the first member's alone; one model: None."
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=6, image_size=48, test_pct=0.3)
    tiny = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", audit=False,
                plan="head:1@1e-3,all:1@1e-5:1e-2")
    with default_precision("fp32"):
        train(table=table, out=tmp_path / "ens", members=2, **tiny)
        train(table=table, out=tmp_path / "one", **tiny)
        curve = B.members_curve(tmp_path / "ens")
        test = table[table["split"] == "test"]
        ensemble = load_model(tmp_path / "ens" / "model").predict(list(test["path"]))
        first = load_model(tmp_path / "ens" / "model")
        first.model = first.model.members[0]
        alone = first.predict(list(test["path"]))
        assert B.members_curve(tmp_path / "one") is None
    assert len(curve) == 2
    assert curve[1] == round(float(np.mean(ensemble["pred"].to_numpy() == test["label"].to_numpy())), 4)
    assert curve[0] == round(float(np.mean(alone["pred"].to_numpy() == test["label"].to_numpy())), 4)
