import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from cxr_fast.evaluation import runs as ev
from cxr_fast.evaluation import metrics as mt
from cxr_fast.cli.evaluate import compare_command
from cxr_fast.core.errors import CxrError, DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES3 = ["Normal", "Pneumonia", "COVID-19"]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0


def fixed_3class(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


# ---- metric functions against scikit-learn -------------------------------------------------

def test_single_label_metrics_match_scikit_learn():
    y, probs = fixed_3class()
    m = mt.single_label_metrics(y, probs, CLASSES3, n_boot=0)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred)
    for i, c in enumerate(CLASSES3):
        pc = m["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]))
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(y, pred).tolist()
    covid = m["disease"]["COVID-19"]  # one-vs-rest at the argmax decision
    tn, fp, fn, tp = skm.confusion_matrix(y == 2, pred == 2).ravel()
    assert covid["sensitivity"] == pytest.approx(tp / (tp + fn)) and covid["specificity"] == pytest.approx(tn / (tn + fp))
    assert set(m["disease"]) == {"Pneumonia", "COVID-19", "any disease"} and "ci" not in m


def test_binary_uses_the_threshold_on_the_disease_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    m = mt.single_label_metrics(y, probs, ["Normal", "Pneumonia"], threshold=0.4, n_boot=0)
    pred = (p1 >= 0.4).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["positive_class"] == "Pneumonia" and m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["disease"]["Pneumonia"]["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["disease"]["Pneumonia"]["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    # the disease class is the positive one whichever position it has
    assert mt.positive_index(["Covid-19", "No_findings"]) == 0 and mt.positive_index(["Infected", "Normal"]) == 0
    assert mt.positive_index(["Normal", "Pneumonia"]) == 1 and mt.positive_index(["a", "b"]) == 1


def test_auc_with_ties_and_weights_matches_scikit_learn():
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.8, 0.2, 0.9])
    positive = np.array([0, 1, 0, 1, 1, 0, 0, 1], bool)
    assert mt.weighted_auc(scores, positive) == pytest.approx(skm.roc_auc_score(positive, scores))
    w = np.array([[1, 2, 0, 1, 3, 1, 1, 0]], float)
    assert mt.weighted_auc(scores, positive, w)[0] == pytest.approx(skm.roc_auc_score(positive, scores, sample_weight=w[0]))
    assert np.isnan(mt.weighted_auc(scores, np.zeros(8, bool)))


def test_class_absent_from_a_split_gives_null_with_a_note_never_a_crash():
    y, probs = fixed_3class()
    keep = y != 2  # like CoronaHack's test split: no COVID-19 image
    y, probs = y[keep], probs[keep]
    m = mt.single_label_metrics(y, probs, CLASSES3, n_boot=50)
    covid = m["per_class"]["COVID-19"]
    assert covid["support"] == 0 and covid["recall"] is None and covid["auc"] is None and covid["f1"] is None
    assert m["disease"]["COVID-19"]["sensitivity"] is None
    assert any("COVID-19 has no images" in n for n in m["notes"])
    pred = probs.argmax(1)
    assert (pred == 2).any()  # the model still calls some COVID-19: those errors count
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=[0, 1], average="macro"))
    assert m["auc"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in (0, 1)]))
    json.dumps(m, allow_nan=False)  # nulls, not NaN


def test_multilabel_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, (70, 3))
    probs = np.clip(0.35 * Y + rng.random((70, 3)) * 0.65, 0, 1)
    t = {"COVID-19": 0.6, "Pneumonia": 0.4, "Normal": 0.5}
    m = mt.multilabel_metrics(Y, probs, ["COVID-19", "Pneumonia", "Normal"], t, n_boot=0)
    P = (probs >= np.array([0.6, 0.4, 0.5])).astype(int)
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(Y, P))  # subset accuracy
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, P, average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean([skm.accuracy_score(Y[:, c], P[:, c]) for c in range(3)]))
    balanced = [skm.balanced_accuracy_score(Y[:, c], P[:, c]) for c in range(3)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(balanced))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(Y, probs, average="macro"))
    for c, name in enumerate(["COVID-19", "Pneumonia", "Normal"]):
        pc = m["per_class"][name]
        assert pc["f1"] == pytest.approx(skm.f1_score(Y[:, c], P[:, c]))
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(Y[:, c], probs[:, c]))
        assert pc["threshold"] == t[name]
        assert m["confusion_matrix"][name] == skm.confusion_matrix(Y[:, c], P[:, c]).tolist()


def test_threshold_tuning_finds_the_known_best_threshold():
    # positives 0.9 0.8 0.35 0.3, negatives 0.7 0.2 0.1 0.05: calling everything >= 0.3 positive gives
    # F1 = 8/9, better than any other cut; the threshold goes half way to the next lower score (0.2)
    scores = np.array([0.9, 0.8, 0.35, 0.3, 0.7, 0.2, 0.1, 0.05])
    positive = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    t, f1 = mt.best_f1_threshold(scores, positive)
    assert t == pytest.approx(0.25) and f1 == pytest.approx(8 / 9)
    grid = np.linspace(0, 1, 1001)
    assert f1 == pytest.approx(max(skm.f1_score(positive, scores >= g, zero_division=0) for g in grid))
    Y = np.stack([positive, ~positive, np.zeros(8, bool)], 1).astype(int)  # b: the labels swapped
    probs = np.stack([scores, 1 - scores, scores], 1)
    thresholds, notes = mt.tune_thresholds(Y, probs, ["a", "b", "empty"])
    # label b: negatives score 0.3 0.8 0.9 0.95 and positives 0.1 0.2 0.65 0.7: the best cut is >= 0.8 (F1 6/7)
    assert thresholds["a"] == pytest.approx(0.25) and thresholds["b"] == pytest.approx((0.8 + 0.7) / 2)
    assert thresholds["empty"] == 0.5 and "empty" in notes[0]


def test_bootstrap_is_seeded_and_patient_level_resampling_is_wider():
    rng = np.random.default_rng(3)
    y1 = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y1 + 0.7 * rng.random(40), 0, 1)
    y, p = np.repeat(y1, 10), np.repeat(p1, 10)  # 40 patients with 10 identical images each
    probs = np.stack([1 - p, p], 1)
    by_patient = mt.single_label_metrics(y, probs, ["Normal", "Pneumonia"], groups=np.repeat(np.arange(40), 10), n_boot=400)
    by_image = mt.single_label_metrics(y, probs, ["Normal", "Pneumonia"], n_boot=400)
    again = mt.single_label_metrics(y, probs, ["Normal", "Pneumonia"], groups=np.repeat(np.arange(40), 10), n_boot=400)
    assert by_patient["ci"] == again["ci"]
    assert "patient-level: 40 patients / 400 images" in by_patient["ci"]["method"]
    assert "image-level" in by_image["ci"]["method"]
    for k in mt.HEADLINE:
        lo, hi = by_patient["ci"][k]
        assert lo <= by_patient[k] <= hi
        assert hi - lo > 1.5 * (by_image["ci"][k][1] - by_image["ci"][k][0])


# ---- a run folder after a tiny training run --------------------------------------------------

def tiny_learner(table):
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

    from cxr_fast.data.blocks import get_dls
    from cxr_fast.models.registry import build_model
    from cxr_fast.data.labels import classes_of, is_multilabel
    torch.manual_seed(0)
    dls = get_dls(table, size=32, bs=8, num_workers=0, aug="none")
    loss = BCEWithLogitsLossFlat() if is_multilabel(table) else CrossEntropyLossFlat()
    return Learner(dls, build_model("resnet18", len(classes_of(table))), loss_func=loss)


def write_history(run_dir):
    "history.csv as training.py writes it: stage, trains, then fastai's recorder columns."
    epochs = [(1, "head", 0), (1, "head", 1), (2, "all", 0)]
    rows = [{"stage": s, "trains": w, "epoch": e, "train_loss": 1.2 - 0.1 * i, "valid_loss": 1.1 - 0.05 * i,
             "accuracy": 0.4 + 0.05 * i, "time": "00:01"} for i, (s, w, e) in enumerate(epochs)]
    pd.DataFrame(rows).to_csv(run_dir / "history.csv", index=False)


@pytest.fixture(scope="module")
def table3(tmp_path_factory):
    from cxr_fast.data.table import build_table
    return build_table("phantom", tmp_path_factory.mktemp("ph3"), "3class", patients_per_class=6, image_size=48, test_pct=0.2)


def test_run_folder_gets_metrics_figures_and_report(table3, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_history(run)
    config = {"arch": "resnet18", "task": "3class", "lr": 1e-3}
    result = ev.evaluate_run(tiny_learner(table3), table3, run, config=config, n_boot=200, n_gradcam=2)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == result and set(result) == {"valid", "test", "thresholds", "calibration"} and result["thresholds"] == {}
    assert result["calibration"]["method"] == "temperature scaling" and result["calibration"]["temperature"] > 0
    for split in ("valid", "test"):
        m = result[split]
        assert m["calibration"]["before"]["ece"] is not None and len(m["calibration"]["bins"]) == 15
        assert m["n"] == int((table3["split"] == split).sum())
        assert all(len(m["ci"][k]) == 2 for k in mt.HEADLINE) and "patient-level" in m["ci"]["method"]
        assert np.array(m["confusion_matrix"]["counts"]).sum() == m["n"]
    pngs = ["curves.png", "confusion_valid.png", "confusion_test.png", "roc_valid.png", "roc_test.png",
            "gallery_valid.png", "gallery_test.png", "gradcam_test.png", "reliability_valid.png", "reliability_test.png"]
    for name in pngs: assert_png(run / name)
    report = (run / "report.md").read_text()
    assert "Synthetic data" in report and "by patient, stratified" in report and "No patient or near-duplicate" in report
    assert "| Normal |" in report and "| lr | 0.001 |" in report and "patient-level" in report
    assert "## Calibration" in report and "ECE before" in report
    assert all(f"]({name})" in report for name in pngs) and "could not be drawn" not in report
    assert not list(run.glob(".*.tmp"))


def test_multilabel_run_tunes_thresholds_on_valid(tmp_path):
    from cxr_fast.data.table import build_table
    table = build_table("phantom", tmp_path / "ph", "multilabel", patients_per_class=5, image_size=48, test_pct=0.2)
    run = tmp_path / "run"  # no history.csv: no curves, said in the report
    result = ev.evaluate_run(tiny_learner(table), table, run, n_boot=50, n_gradcam=2)
    t = result["thresholds"]
    assert set(t) == {"COVID-19", "Pneumonia", "Normal"} and all(0 <= v <= 1 for v in t.values())
    assert result["test"]["per_class"]["Pneumonia"]["threshold"] == t["Pneumonia"]  # test uses the tuned ones
    assert set(result["test"]["confusion_matrix"]) == set(t) and "exact_match" in result["test"]
    assert not (run / "curves.png").exists() and "No training history" in (run / "report.md").read_text()
    for name in ("confusion_test.png", "roc_valid.png", "gallery_test.png", "gradcam_test.png"): assert_png(run / name)


# ---- a trained model on other data -------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path):
    from cxr_fast.models.registry import build_model, default_head
    from cxr_fast.models.folder import save_model_dir
    torch.manual_seed(0)
    meta = {"arch": "resnet18", "head": default_head(), "n_out": 2, "classes": ["Covid-19", "No_findings"],
            "task": "folders", "multilabel": False, "loss": "cross_entropy", "img_size": 32, "resize_method": "squish",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "thresholds": {"positive": 0.5}}
    return save_model_dir(build_model("resnet18", 2), tmp_path / "run" / "model", meta)


@pytest.fixture
def other_data(tmp_path):
    "Class folders named differently from the model's classes, plus SARS, which the model does not know."
    from cxr_fast.data.sources.phantom import _anatomy, draw_phantom
    rng = np.random.default_rng(0)
    root = tmp_path / "other"
    for cls, finding, n in (("COVID-19", "COVID-19", 4), ("Normal", "Normal", 4), ("SARS", "Pneumonia", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(draw_phantom(finding, _anatomy(rng), 48, rng)).save(root / cls / f"{cls}-{i}.png")
    return root


def test_evaluate_on_other_data_maps_classes_and_reports_unknown_ones(model_dir, other_data, tmp_path):
    out = tmp_path / "eval"
    trained_on = sorted((other_data / "Normal").glob("*.png"))[:1]  # one image the model's run also had
    pd.DataFrame({"path": [str(p) for p in trained_on]}).to_csv(model_dir.parent / "table.csv", index=False)
    result = ev.evaluate(model_dir.parent, "folders", other_data, out=out, n_boot=50, n_gradcam=2,
                         classes="COVID-19->Covid-19,Normal->No_findings")
    test = result["test"]
    assert test["n"] == 8 and test["per_class"]["Covid-19"]["support"] == 4 and test["positive_class"] == "Covid-19"
    assert result["unknown_classes"]["SARS"]["images"] == 2
    assert sum(result["unknown_classes"]["SARS"]["predicted_as"].values()) == 2
    assert result["class_map"] == {"COVID-19": "Covid-19", "Normal": "No_findings"}
    assert result["images_in_training_table"] == 1
    assert json.loads((out / "metrics.json").read_text())["test"] == test
    assert json.loads((out / "config.json").read_text())["arch"] == "resnet18"
    for name in ("confusion_test.png", "roc_test.png", "gallery_test.png", "gradcam_test.png"): assert_png(out / name)
    assert not (out / "curves.png").exists()
    report = (out / "report.md").read_text()
    assert "Classes the model does not know" in report and "| SARS | 2 |" in report and "COVID-19 -> Covid-19" in report
    assert "1 of these images are in the table the model was trained" in report
    # the probabilities are the ones `predict` gives
    from cxr_fast.inference.predictor import Predictor
    table = pd.DataFrame({"path": sorted(str(p) for p in (other_data / "COVID-19").glob("*.png"))})
    learn, _ = model_learner(model_dir, table["path"][0])
    predicted = Predictor.from_dir(model_dir, precision="fp32").predict_proba(table["path"].tolist())[0]  # as learn
    assert np.allclose(ev.learner_probs(learn, table, False), predicted, atol=1e-4)


def test_tta_in_evaluation_is_the_tta_predict_gives(model_dir, other_data):
    "train --tta scores splits with TTAViews inside get_preds; predict --tta must give the same probabilities."
    from cxr_fast.inference.predictor import Predictor
    from cxr_fast.training.precision import ChannelsLast
    paths = sorted(str(p) for p in (other_data / "Normal").glob("*.png")) + sorted(
        str(p) for p in (other_data / "SARS").glob("*.png"))
    table = pd.DataFrame({"path": paths})
    learn, meta = model_learner(model_dir, paths[0], bs=4)  # 6 images: a full and a partial batch
    learn.add_cb(ChannelsLast())  # TTAViews runs first, so the stacked views get the memory format too
    predictor = Predictor.from_dir(model_dir, precision="fp32")
    plain, tta = (predictor.predict_proba(paths, tta=t)[0] for t in (False, True))
    logits = ev.learner_logits(learn, table, tta=True)
    assert logits.shape == (6, 2) and not np.allclose(tta, plain, atol=1e-3)  # the views change the scores
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), tta, atol=1e-4)
    assert np.allclose(ev.learner_probs(learn, table, False), plain, atol=1e-4)  # and the callback is gone again
    assert not predictor.tta and Predictor(predictor.model, {**meta, "tta": True}).tta  # model.json's default


def model_learner(model_dir, sample_path, bs=32):
    """(fastai Learner, meta) for a model dir: its weights (weights_only) and the training-time item and batch
    transforms (resize, ImageNet normalisation, no augmentation), for test DataLoaders."""
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

    from cxr_fast.data.blocks import cxr_datablock
    from cxr_fast.models.folder import load_model_module
    model, meta = load_model_module(model_dir)
    classes, multilabel = list(meta["classes"]), bool(meta["multilabel"])
    stub = pd.DataFrame({"path": [str(sample_path)] * 2, "patient_id": ["a", "b"], "split": ["train", "valid"],
                         "source": "model"})
    if multilabel: stub = stub.assign(**{c: 0 for c in classes})
    else: stub["label"] = classes[0]
    stub.attrs.update(classes=classes, multilabel=multilabel)
    size = meta["img_size"]
    size = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    dls = cxr_datablock(stub, size, aug="none", resize_method=meta.get("resize_method") or "squish").dataloaders(
        stub, bs=bs, num_workers=0)
    learn = Learner(dls, model.to(dls.device), loss_func=BCEWithLogitsLossFlat() if multilabel else CrossEntropyLossFlat())
    return learn, meta


def test_multilabel_data_is_matched_label_by_label():
    table = pd.DataFrame({"path": ["a", "b", "c"], "patient_id": ["1", "2", "3"], "split": "train", "source": "x",
                          "COVID-19": [1, 0, 0], "Pneumonia": [1, 1, 0], "Effusion": [0, 1, 1]})
    table.attrs.update(classes=["COVID-19", "Pneumonia", "Effusion"], multilabel=True)
    part, labels, unknown, mapping = ev.onto_model(table, ["Covid-19", "Pneumonia", "Normal"], "COVID-19->Covid-19")
    assert labels == ["Covid-19", "Pneumonia"] and list(unknown) == ["Effusion"] and len(unknown["Effusion"]) == 2
    assert part["Covid-19"].tolist() == [1, 0, 0]


def test_evaluate_rejects_a_mapping_that_does_not_fit(model_dir, other_data, tmp_path):
    with pytest.raises(DataError, match="does not have"):
        ev.evaluate(model_dir, "folders", other_data, out=tmp_path / "e", classes="COVID-19->Corona")
    with pytest.raises(DataError, match="not among this data's classes"):
        ev.evaluate(model_dir, "folders", other_data, out=tmp_path / "e", classes="MERS->Covid-19")
    from cxr_fast.cli import main
    assert main(["evaluate", str(model_dir), "folders", str(other_data), "--classes", "COVID-19->Corona"]) == 2


# ---- comparing runs --------------------------------------------------------------------------

def fake_run(path, lr, acc, test=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"arch": "resnet18", "task": "3class", "lr": lr, "bs": 32,
                                                  "out": str(path), "plan": [{"train": "head", "epochs": 1}]}))
    metrics = {"valid": {"accuracy": acc, "macro_f1": acc - 0.1, "auc": None}, "thresholds": {}}
    if test: metrics["test"] = {"accuracy": acc - 0.05, "macro_f1": acc - 0.15, "auc": 0.9}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_compare_shows_differing_config_and_headline_metrics(tmp_path, capsys):
    a, b = fake_run(tmp_path / "runs" / "a", 1e-3, 0.8), fake_run(tmp_path / "runs" / "b", 1e-4, 0.7, test=False)
    df = ev.compare(a, b, out=tmp_path / "cmp.md")
    assert list(df["run"]) == ["a", "b"] and list(df["lr"]) == [1e-3, 1e-4]
    assert "bs" not in df and "out" not in df and "plan" not in df and {"arch", "task"} <= set(df.columns)
    assert df["valid_accuracy"].tolist() == [0.8, 0.7] and np.isnan(df.loc[1, "test_accuracy"])
    text = (tmp_path / "cmp.md").read_text()
    assert text.startswith("| run | arch | task | lr |") and "| n/a |" in text and "0.800" in text
    assert ev.compare(tmp_path / "runs")["run"].tolist() == ["a", "b"]  # a folder of runs stands for them
    assert compare_command(a, b) == 0 and "| a | resnet18 |" in capsys.readouterr().out
    with pytest.raises(CxrError, match="not a run folder"): ev.compare(tmp_path / "nothing")
