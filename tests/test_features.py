"""Frozen-feature head training (training/features.py): the same head as end to end, and a run predict can load."""
import json

import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from cxr_fast import build_table, cxr_learner, get_dls, load_model, train
from cxr_fast.core.errors import CxrError
from cxr_fast.models.registry import default_head
from cxr_fast.training.features import fit_head_on_features, pooling_depth, uses_frozen_features
from cxr_fast.training.plans import fit_stage, parse_plan

TINY = dict(arch="test_resnet", pretrained=False, size=32, num_workers=0, aug="none")  # timm's 0.5M-param resnet


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return build_table("phantom", tmp_path_factory.mktemp("ph") / "3class", "3class", patients_per_class=6,
                       image_size=48)


def head_stage_learner(table):
    """A learner whose head-only stage is deterministic end to end too: one batch of the whole train split (its
    order does not matter), no augmentation, no dropout, the body's BatchNorm frozen (train_bn=False)."""
    set_seed(0, reproducible=True)
    n_train = int((table["split"] == "train").sum())
    dls = get_dls(table, size=32, bs=n_train, aug="none", num_workers=0)
    return cxr_learner(dls, "test_resnet", head=default_head(dropout=0.0), pretrained=False, train_bn=False)


def test_head_on_frozen_features_matches_the_end_to_end_head(table):
    stage = parse_plan("head:3@1e-2", 1e-2)[0]
    end_to_end, on_features = head_stage_learner(table), head_stage_learner(table)
    fit_stage(end_to_end, stage)
    fit_head_on_features(on_features, stage)
    p_end, _ = end_to_end.get_preds()
    p_feat, _ = on_features.get_preds()
    assert not torch.allclose(p_end, head_stage_learner(table).get_preds()[0], atol=1e-3)  # the head did train
    assert torch.allclose(p_end, p_feat, atol=1e-3)
    last = [[round(v, 3) for v in learn.recorder.values[-1]] for learn in (end_to_end, on_features)]
    assert last[0] == last[1]  # valid loss, accuracy, F1 after the stage


def test_only_head_stages_of_a_frozen_features_run_use_features():
    head, layers = (parse_plan(p, 1e-3)[0] for p in ("head:1", "layers=layer1:1"))
    assert uses_frozen_features(head, {"frozen_features": True})
    assert not uses_frozen_features(head, {"frozen_features": False})
    assert not uses_frozen_features(layers, {"frozen_features": True})


def test_features_are_what_the_head_pools(table):
    learn = head_stage_learner(table)
    assert pooling_depth(learn.model[1]) == 2  # fastai's AdaptiveConcatPool2d, Flatten


def test_a_run_with_frozen_features_saves_a_model_predict_loads(table, tmp_path):
    out = tmp_path / "run"
    train(table=table, out=out, plan="head:2@1e-2,all:1@1e-3", frozen_features=True, bs=8, **TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["frozen_features"] is True
    history = pd.read_csv(out / "history.csv")
    assert history["stage"].tolist() == [1, 1, 2] and history["trains"].tolist() == ["head", "head", "all"]
    preds = load_model(out / "model").predict(table["path"].tolist()[:3])
    classes = json.loads((out / "model" / "model.json").read_text())["classes"]
    assert len(preds) == 3 and {f"p_{c}" for c in classes} <= set(preds) and set(preds["pred"]) <= set(classes)


def test_frozen_features_refuse_weighted_sampling(table, tmp_path):
    with pytest.raises(CxrError, match="frozen_features does not sample by weight"):
        train(table=table, out=tmp_path / "w", plan="head:1", frozen_features=True, oversample=True, bs=8, **TINY)


class Killed(Exception):
    pass


class KillInThirdEpoch(Callback):
    "A crash in epoch 2 of a 3-epoch stage, after epoch 1's checkpoint."
    def before_batch(self):
        if self.n_epoch == 3 and self.epoch == 2: raise Killed("simulated kill")


def test_a_run_killed_in_a_frozen_features_stage_resumes_there(table, tmp_path):
    kw = dict(table=table, out=tmp_path / "run", plan="head:3@1e-2,all:1@1e-3", frozen_features=True, bs=8, **TINY)
    with pytest.raises(Killed): train(cbs=[KillInThirdEpoch()], **kw)
    assert pd.read_csv(tmp_path / "run" / "history.csv")["stage"].tolist() == [1, 1]
    result = train(resume=True, **kw)
    assert pd.read_csv(tmp_path / "run" / "history.csv")["stage"].tolist() == [1, 1, 1, 2]
    assert result["valid"]["accuracy"] is not None
