"""The model card: its facts, MODEL_CARD.md, and the external evaluations `evaluate` adds."""
import json

import pandas as pd

from cxr_fast.evaluation import card

META = {
    "format_version": 1, "cxr_fast_version": "0.1.0", "arch": "resnet18",
    "head": {"hidden": None, "dropout": 0.5, "concat_pool": True}, "n_out": 2, "classes": ["Normal", "Pneumonia"],
    "task": "normal-vs-pneumonia", "multilabel": False, "loss": "ce", "img_size": 224, "resize_method": "squish",
    "preprocessing": "none", "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "thresholds": {"positive": 0.31},
    "training": {"pretrained": True, "weights": None},
    "data": {"source": "coronahack", "task": "normal-vs-pneumonia", "split_method": "by patient, stratified, seed 42",
             "counts": {"train": {"Normal": 1000, "Pneumonia": 2800, "total images": 3800, "patients": 2100},
                        "test": {"Normal": 234, "Pneumonia": 390, "total images": 624, "patients": 400}},
             "sources": {"coronahack": 4424},
             "leakage": {"shared_patient": {"count": 0, "examples": []},
                         "near_duplicate": {"count": 2, "examples": ["a.jpeg: looks like b.jpeg (train vs test)"]}},
             "classes_absent": []},
    "metrics": {"valid": {"n": 500, "accuracy": 0.9, "auc": 0.95, "ci": {"accuracy": [0.87, 0.93]}},
                "test": {"n": 150, "accuracy": 0.81, "auc": 0.9, "calibration": {"ece": 0.042},
                         "ci": {"accuracy": [0.75, 0.87], "auc": [0.85, 0.94], "method": "95% percentile bootstrap"}}},
    "calibration": {"method": "temperature scaling", "temperature": 1.8, "fitted_on": "valid", "n_fit": 500,
                    "ece": {"valid": {"before": 0.11, "after": 0.02}, "test": {"before": 0.12, "after": 0.04}}},
    "operating_point": {"target_sensitivity": 0.95, "threshold": 0.31, "chosen_on": "valid", "default_threshold": 0.5,
                        "test": {"sensitivity": 0.96, "specificity": 0.62},
                        "at_default": {"test": {"sensitivity": 0.9, "specificity": 0.8}}},
}


def test_card_says_what_the_issue_asks():
    text = card.render_card(META)
    for words in ("NOT A MEDICAL DEVICE", "## Intended use", "resnet18", "ImageNet weights",
                  "coronahack (4424 images)", "by patient, stratified", "| Pneumonia | 2800 | 390 |",
                  "2 near-duplicate image pair(s)", "image size 224", "0.810 [0.750, 0.870]", "T = 1.800", "| test | 0.120 | 0.040 |",
                  "sensitivity 0.95", "specificity 0.620", "None yet", "## Known limitations",
                  "It has seen images from coronahack only", "150 images: the confidence intervals are wide",
                  "Leakage found"):
        assert words in text, words
    facts = card.card_facts(META)
    assert facts["disclaimer"] == card.DISCLAIMER and facts["internal_metrics"]["test"]["ece"] == 0.042
    json.dumps(facts)  # plain JSON for model.json


def test_starting_weights_from_the_provenance_record_when_there_is_one():
    assert "random initialisation" in card.starting_weights({"training": {"pretrained": False}})
    assert card.starting_weights({}) == "not recorded"
    line = card.starting_weights({"weights": {"source": "torchvision", "weights": "ResNet18_Weights.IMAGENET1K_V1"}})
    assert "torchvision" in line and "IMAGENET1K_V1" in line


def test_evaluations_are_added_and_replaced_by_report(tmp_path):
    result = {"test": {"n": 40, "accuracy": 0.7, "auc": 0.8, "ci": {"accuracy": [0.6, 0.8]}, "calibration": {"ece": 0.09}},
              "unknown_classes": {"COVID-19": {"images": 5}}, "images_in_training_table": 0, "class_map": {}}
    config = {"source": "folders", "root": "/data/darkcovidnet", "task": "folders", "split": "all"}
    meta = card.add_evaluation(META, card.evaluation_entry(result, config, tmp_path / "eval-a"))
    meta = card.add_evaluation(meta, card.evaluation_entry(result, config, tmp_path / "eval-b"))
    meta = card.add_evaluation(meta, card.evaluation_entry({**result, "test": {**result["test"], "n": 41}}, config,
                                                           tmp_path / "eval-a"))
    assert [e["n"] for e in meta["evaluations"]] == [40, 41]  # eval-a re-run replaces its own entry
    assert meta["card"]["external_evaluations"] == meta["evaluations"]
    path = card.write_card(tmp_path, meta)
    text = path.read_text()
    assert path.name == "MODEL_CARD.md" and "folders:darkcovidnet" in text and "0.700 [0.600, 0.800]" in text
    assert "COVID-19 (5)" in text and "except the external evaluations listed above (folders:darkcovidnet)" in text


def test_data_facts_from_a_table():
    table = pd.DataFrame({"path": ["a", "b", "c"], "patient_id": ["1", "1", "2"], "split": ["train", "test", "train"],
                          "label": ["Normal", "Normal", "Pneumonia"], "source": ["folders", "folders", "coronahack"]})
    table.attrs["problems"] = [{"kind": "shared_patient", "path": "", "detail": "patient 1 is in test, train"},
                               {"kind": "class_absent", "path": "", "detail": "class Pneumonia has no images in the test split"},
                               {"kind": "input_warning", "path": "c", "detail": "almost constant image"}]
    facts = card.data_facts(table)
    assert facts["sources"] == {"folders": 2, "coronahack": 1}
    assert facts["leakage"]["shared_patient"]["count"] == 1 and facts["leakage"]["near_duplicate"]["count"] == 0
    assert facts["classes_absent"] == ["class Pneumonia has no images in the test split"]
    assert facts["problems"]["input_warning"] == 1
    limits = " ".join(card.limitations({**META, "data": {**META["data"], **facts}}))
    assert "coronahack, folders" in limits and "learn to tell the sources apart" in limits and "Gap in the data" in limits
