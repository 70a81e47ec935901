"""Training -> model dir -> predict agree on what the model sees and decides."""
import numpy as np
import pandas as pd
import torch

from cxr_fast import load_model
from cxr_fast.data.table import build_table
from cxr_fast.data.labels import positive_index
from cxr_fast.training.run import train


def test_trained_model_with_equalize_predicts_what_training_saw(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=4, image_size=48, valid_pct=0.3, dedup="off")
    train(table=table, out=tmp_path / "run", pretrained=False, epochs=1, size=32, bs=8, num_workers=0,
          preprocessing="equalize", aug="none", seed=1)
    model = load_model(tmp_path / "run")
    assert model.preprocessing == "equalize"
    valid = pd.read_csv(tmp_path / "run" / "table.csv").query("split == 'valid'")
    df = model.predict(valid["path"].tolist())
    # the learner's own probabilities on the same images, through the training DataBlock
    from cxr_fast.data.blocks import get_dls
    dls = get_dls(table, size=32, bs=8, num_workers=0, aug="none", preprocessing="equalize")
    net = model.model.eval()
    with torch.inference_mode():
        x = torch.cat([b[0] for b in dls.test_dl(valid.reset_index(drop=True), with_labels=True)])
        t = model.temperature if model.temperature is not None else 1.0  # the temperature fitted on valid
        expected = torch.softmax(net(x) / t, 1).numpy()
    got = df[[f"p_{c}" for c in model.classes]].to_numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_binary_threshold_is_on_the_disease_class_whatever_its_position():
    assert positive_index(["Covid-19", "No_findings"]) == 0
    assert positive_index(["Normal", "Pneumonia"]) == 1
    from cxr_fast.inference.predictor import Predictor
    p = Predictor.__new__(Predictor)
    p.classes, p.multilabel, p.thresholds = ["Covid-19", "No_findings"], False, {"positive": 0.2}
    probs = np.array([[0.25, 0.75], [0.1, 0.9]])
    assert p.decide(probs) == ["Covid-19", "No_findings"]  # 0.25 >= 0.2 on Covid-19
