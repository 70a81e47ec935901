"""A model folder written by cxr_fast 0.1.0 (before the package layout moved) still loads, predicts and evaluates.

tests/fixtures/model_v0.1.0 is a 1-epoch `test_resnet` on 3-class phantoms (32 px), written by `train` at 0.1.0;
it must stay readable by every later version (issue #21: model folders written by today's code stay readable).
"""
import shutil
from pathlib import Path

import pandas as pd
import pytest

import cxr_fast
from cxr_fast.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "model_v0.1.0"
CLASSES = ["Normal", "Pneumonia", "COVID-19"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    cxr_fast.make_phantoms(root, patients_per_class=2, images_per_patient=(1, 1), size=64, seed=1)
    return root


def test_the_fixture_is_a_model_folder_of_today():
    assert {"model.json", "model.pth"} <= {p.name for p in FIXTURE.iterdir()}


def test_load_model_predicts_a_phantom_with_the_saved_classes(phantoms):
    model = cxr_fast.load_model(FIXTURE)
    assert list(model.classes) == CLASSES
    image = sorted(phantoms.rglob("*.png"))[0]
    preds = model.predict([image])
    assert len(preds) == 1 and preds["error"].iloc[0] == ""
    assert {"path", "pred", *(f"p_{c}" for c in CLASSES)} <= set(preds.columns)
    assert preds["pred"].iloc[0] in CLASSES
    assert abs(sum(preds[f"p_{c}"].iloc[0] for c in CLASSES) - 1) < 1e-4


def test_predict_and_evaluate_from_the_command_line(phantoms, tmp_path):
    model = shutil.copytree(FIXTURE, tmp_path / "model")  # evaluate adds itself to the model card: not the fixture's
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model), str(phantoms), "--out", str(out)]) == 0
    preds = pd.read_csv(out)
    assert len(preds) == 6 and set(preds["pred"]) <= set(CLASSES)
    assert main(["evaluate", str(model), "phantom", str(phantoms), "--task", "3class", "--out", str(tmp_path / "ev"),
                 "--n-boot", "10", "--gradcam", "0"]) == 0
    assert (tmp_path / "ev" / "report.md").exists()
    assert "phantom" in (model / "MODEL_CARD.md").read_text() or "phantom" in (model / "model.json").read_text()
