"""Training on tiny phantoms: plans freeze what they say, LRs reach the optimizer, the run folder, resume, errors."""
import inspect
import json
import sys
from pathlib import Path
import types

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from torch import nn

from cxr_fast import cli
from cxr_fast.models import folder as modelio
from cxr_fast.data.blocks import get_dls
from cxr_fast.core.errors import CxrError, WeightsError
from cxr_fast.models.registry import named_layer
from cxr_fast.training.plans import apply_stage, check_plan, fit_stage, parse_lr, parse_plan, to_fastai_lr
from cxr_fast.data.table import build_table
from cxr_fast.training.imbalance import class_weight_values, sampling_weights, subsample_majority_train
from cxr_fast.training.learner import cxr_learner
from cxr_fast.training.options import resolve_config
from cxr_fast.training.run import train

TINY = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none")  # timm's 0.5M-param resnet


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    return {task: build_table("phantom", root / task, task, patients_per_class=6, image_size=48)
            for task in ("3class", "multilabel")}


@pytest.fixture(scope="module")
def r18(phantoms):
    "An untrained resnet18 learner (3 layer groups: conv1..layer2, layer3..layer4, head)."
    return lambda **kw: cxr_learner(get_dls(phantoms["3class"], size=32, bs=8, num_workers=0), "resnet18",
                                    pretrained=False, **kw)


@pytest.fixture
def real_evaluation():
    "Requested by a test that runs the real evaluation.evaluate_run."


@pytest.fixture(autouse=True)
def fake_evaluate_run(monkeypatch, request):
    "evaluation.evaluate_run's contract, fast: valid metrics from learn.validate(); calls recorded."
    calls = []
    if "real_evaluation" in request.fixturenames: return calls

    def evaluate_run(learn, table, run_dir, config=None):
        calls.append({"table": table, "run_dir": run_dir, "config": config})
        loss, *metrics = learn.validate()
        result = {"valid": {"loss": float(loss), "accuracy": float(metrics[0])}, "thresholds": {}}
        (run_dir / "metrics.json").write_text(json.dumps(result))
        return result
    try:
        import cxr_fast.evaluation.runs as evaluation
    except Exception:  # being written by another engineer
        evaluation = types.ModuleType("cxr_fast.evaluation.runs")
        monkeypatch.setitem(sys.modules, "cxr_fast.evaluation.runs", evaluation)
    monkeypatch.setattr(evaluation, "evaluate_run", evaluate_run, raising=False)
    return calls


def train_defaults():
    "train()'s options with their defaults (what resolve_config receives)."
    params = inspect.signature(train).parameters
    return {k: p.default for k, p in params.items() if k not in ("table", "cbs", "source_options", "out")}


def bn_ids(module):
    return {id(p) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}


def trainable(params):
    return [p.requires_grad for p in params]


# ---- plan syntax ------------------------------------------------------------------------------

def test_plan_string_syntax():
    plan = parse_plan("head:2@1e-3,layers=conv1+layer1+layer3:3@1e-3,freeze_to:2:1,all:4@1e-5:1e-3", default_lr=2e-3)
    assert [(s["train"], s["epochs"], s["lr"]) for s in plan] == [
        ("head", 2, 1e-3), ("layers=conv1+layer1+layer3", 3, 1e-3), ("freeze_to=2", 1, 2e-3), ("all", 4, "1e-05:0.001")]
    assert plan[0]["pct_start"] == 0.25 and plan[0]["div"] == 25.0


def test_plan_dicts_match_strings():
    dicts = [{"train": "head", "epochs": 10, "lr": 1e-3}, {"train": "layers:features.10", "epochs": 1, "lr": "auto/10"},
             {"train": "all", "epochs": 10, "lr": [1e-5, 1e-3], "pct_start": 0.3}]
    plan = parse_plan(dicts, default_lr=1e-3)
    assert [s["train"] for s in plan] == ["head", "layers=features.10", "all"]
    assert plan[1]["lr"] == "auto/10" and plan[2]["lr"] == "1e-05:0.001" and plan[2]["pct_start"] == 0.3


@pytest.mark.parametrize("bad", ["head", "head:x", "heads:2", "head=1:2", "freeze_to=0:2", "all:2@abc",
                                 "all:2@1e-3:1e-5", "all:0", "head:1,,all:1", "layers:2"])
def test_bad_plan_is_one_line_error(bad):
    with pytest.raises(CxrError) as e: parse_plan(bad, default_lr=1e-3)
    assert "plan" in str(e.value) and "\n" not in str(e.value)


def test_learning_rate_specs():
    assert to_fastai_lr(parse_lr("1e-3")) == 1e-3
    assert to_fastai_lr(parse_lr("1e-5:1e-3")) == slice(1e-5, 1e-3)
    assert to_fastai_lr(parse_lr(":1e-3")) == slice(None, 1e-3)
    assert to_fastai_lr(parse_lr("auto/100:auto"), suggestion=0.01) == slice(1e-4, 0.01)
    with pytest.raises(CxrError, match="lr-find"): to_fastai_lr(parse_lr("auto"))


def test_default_plan_is_fine_tune_or_one_cycle():
    base = {**train_defaults(), "source": "phantom", "root": "x", "task": "3class", "epochs": 3, "lr": 2e-3}
    tuned = resolve_config(base)["plan"]
    assert [(s["train"], s["epochs"], s["lr"], s["pct_start"], s["div"]) for s in tuned] == [
        ("head", 1, ":0.002", 0.99, 25.0), ("all", 3, "1e-05:0.001", 0.3, 5.0)]  # fastai fine_tune(3, 2e-3)
    scratch = resolve_config({**base, "pretrained": "false"})["plan"]
    assert [(s["train"], s["epochs"], s["lr"]) for s in scratch] == [("all", 3, 2e-3)]


# ---- freeze plans freeze exactly what they say -----------------------------------------------

@pytest.mark.parametrize("train_bn", [True, False])
def test_head_and_freeze_to_and_all(r18, train_bn):
    learn = r18(train_bn=train_bn)
    groups, bn = learn.splitter(learn.model), bn_ids(learn.model)
    assert len(groups) == 3
    frozen = lambda g: [train_bn and id(p) in bn for p in g]  # noqa: E731  fastai's train_bn rule
    apply_stage(learn, {"train": "head"})
    assert [trainable(g) for g in groups] == [frozen(groups[0]), frozen(groups[1]), [True] * len(groups[2])]
    apply_stage(learn, {"train": "freeze_to=2"})
    assert [trainable(g) for g in groups] == [frozen(groups[0]), [True] * len(groups[1]), [True] * len(groups[2])]
    apply_stage(learn, {"train": "all"})
    assert all(p.requires_grad for p in learn.model.parameters())


@pytest.mark.parametrize("train_bn", [True, False])
def test_named_layers_train_with_the_head(r18, train_bn):
    learn = r18(train_bn=train_bn)
    apply_stage(learn, {"train": "layers=conv1+layer1+layer3"})
    named = {id(p) for n in ("conv1", "layer1", "layer3") for p in named_layer(learn.model, n).parameters()}
    bn = bn_ids(learn.model)
    for name, p in learn.model[0].named_parameters():
        assert p.requires_grad == (id(p) in named or (train_bn and id(p) in bn)), name
    assert all(p.requires_grad for p in learn.model[1].parameters())
    layer2 = {n: p.requires_grad for n, p in learn.model[0].layer2.named_parameters()}
    assert layer2 == {n: train_bn and (".bn" in n or "downsample.1" in n) for n in layer2}


def test_plan_that_does_not_fit_the_model(r18):
    learn = r18()
    with pytest.raises(CxrError, match="no layer named 'layer9'.*conv1"):
        check_plan(learn, parse_plan("layers=conv1+layer9:1", 1e-3))
    with pytest.raises(CxrError, match="3 layer groups"): check_plan(learn, parse_plan("freeze_to=4:1", 1e-3))


# ---- discriminative learning rates reach the optimizer ---------------------------------------

class CaptureLRs(Callback):
    "Record each param group's lr at the first batch (one-cycle start: lr_max / div), then stop."
    order = 100  # after fastai's ParamScheduler has set this batch's rates

    def before_batch(self):
        self.lrs = [pg["lr"] for pg in self.opt.param_groups]
        self.trainable = [any(p.requires_grad for p in pg["params"]) for pg in self.opt.param_groups]
        raise CancelFitException()


@pytest.mark.parametrize("stage, lrs", [
    ("all:1@1e-5:1e-3", [1e-5, 1e-4, 1e-3]),   # slice(lo, hi): geometric across the 3 groups
    ("head:1@:1e-3", [1e-4, 1e-4, 1e-3]),      # slice(hi): hi/10 for the body groups
    ("freeze_to=2:1@3e-4", [3e-4] * 3),        # one rate for every group
])
def test_discriminative_lrs_reach_param_groups(r18, stage, lrs):
    learn, capture = r18(), CaptureLRs()
    fit_stage(learn, parse_plan(stage, 1e-3)[0], cbs=[capture])
    assert capture.lrs == pytest.approx([lr / 25 for lr in lrs])  # fit_one_cycle starts at lr_max / div


def test_fine_tune_plan_gives_fastai_fine_tune_lrs(r18):
    learn = r18()
    plan = resolve_config({**train_defaults(), "arch": "resnet18", "lr": 2e-3, "pretrained": True})["plan"]
    got = []
    for stage in plan:
        capture = CaptureLRs()
        fit_stage(learn, stage, cbs=[capture])
        got.append((capture.lrs, capture.trainable))
    lr_max = [[2e-4, 2e-4, 2e-3], [1e-5, 1e-4, 1e-3]]  # fine_tune: slice(lr), then slice(lr/200, lr/2)
    assert got[0][0] == pytest.approx([lr / 25 for lr in lr_max[0]])
    assert got[1][0] == pytest.approx([lr / 5 for lr in lr_max[1]])
    assert got[0][1] == [True, True, True]  # BatchNorm of the frozen groups trains (train_bn)
    assert got[1][1] == [True, True, True]


# ---- the run folder, from the command line ---------------------------------------------------

def test_cli_train_writes_the_run_folder(phantoms, tmp_path, capsys, fake_evaluate_run):
    root, out = Path(phantoms["3class"]["path"][0]).parent, tmp_path / "run"
    code = cli.main(["train", "phantom", str(root), "--task", "3class", "--arch", "test_resnet", "--out", str(out),
                     "--pretrained", "false", "--plan", "head:1@1e-3,all:1@1e-5:1e-3", "--size", "32", "--bs", "8",
                     "--num-workers", "0", "--aug", "none", "--patients-per-class", "6", "--hidden", "64",
                     "--test-pct", "0.2"])
    printed = capsys.readouterr().out
    assert code == 0 and f"run folder: {out}" in printed and "valid: loss" in printed
    for name in ("config.json", "history.csv", "metrics.json", "table.csv", "table.json", "model/model.json",
                 "model/model.pth", "checkpoints/last.pth", "checkpoints/best.pth"):
        assert (out / name).is_file(), name
    history = pd.read_csv(out / "history.csv")
    rows = list(history[["stage", "trains", "epoch"]].itertuples(index=False, name=None))
    assert rows == [(1, "head", 0), (2, "all", 0)]
    assert {"train_loss", "valid_loss", "accuracy", "f1_score"} <= set(history.columns)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "test_resnet" and config["hidden"] == [64] and config["pretrained"] is False
    assert config["source_options"] == {"patients_per_class": 6} and len(config["plan"]) == 2
    meta = json.loads((out / "model" / "model.json").read_text())
    assert set(modelio.REQUIRED_KEYS) | {"loss", "thresholds", "resize_method", "data", "metrics"} <= set(meta)
    assert meta["loss"] == "ce" and meta["head"]["hidden"] == [64] and meta["img_size"] == 32
    assert meta["data"]["counts"]["test"]["total images"] > 0 and meta["metrics"]["valid"]["loss"] > 0
    call = fake_evaluate_run[-1]
    assert set(call["table"]["split"]) == {"train", "valid", "test"} and call["config"]["arch"] == "test_resnet"
    model, _ = modelio.load_model_module(out / "model")
    with torch.no_grad(): assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("args, words", [
    (["--arch", "resnet9000"], "unknown architecture"),
    (["--plan", "head:x@1e-3"], "--plan stage"),
    (["--plan", "all:1@fast"], "bad learning rate"),
    (["--opt", "rmsprop"], "--opt must be one of adam, adamw, sgd"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, args, words):
    code = cli.main(["train", "phantom", str(tmp_path / "ph"), "--task", "3class", "--out", str(tmp_path / "run"),
                     "--pretrained", "false", *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "ph").exists() and not (tmp_path / "run").exists()  # refused before any work


def test_offline_pretrained_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CXR_FAST_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        train("phantom", tmp_path / "ph", "3class", arch="resnet18", out=tmp_path / "run")
    msg = str(e.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg and "--pretrained false" in msg
    assert not (tmp_path / "ph").exists()  # before any data work


# ---- resume ------------------------------------------------------------------------------------

class Killed(Exception):
    pass


class KillInSecondEpoch(Callback):
    "A crash in the middle of epoch 1 of the 3-epoch stage (after epoch 0's checkpoint)."
    def before_batch(self):
        if self.n_epoch == 3 and self.epoch == 1 and self.iter == 1: raise Killed("simulated kill")


def test_resume_after_kill_matches_an_uninterrupted_run(phantoms, tmp_path):
    kw = dict(table=phantoms["3class"], plan="head:1@1e-3,all:3@1e-4:1e-3", seed=3, oversample=True, **TINY)
    train(out=tmp_path / "whole", **kw)
    with pytest.raises(Killed): train(out=tmp_path / "killed", cbs=[KillInSecondEpoch()], **kw)
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.pth", weights_only=True)
    assert (last["stage"], last["epoch"], last["stage_done"]) == (1, 0, False)
    assert not (tmp_path / "killed" / "model").exists()
    with pytest.raises(CxrError, match="already holds a run"): train(out=tmp_path / "killed", **kw)
    with pytest.raises(CxrError, match="configuration differs.*seed: 3 -> 4"):
        train(out=tmp_path / "killed", resume=True, **{**kw, "seed": 4})
    result = train(out=tmp_path / "killed", resume=True, **kw)
    assert (tmp_path / "killed" / "model" / "model.json").is_file() and "valid" in result
    whole, resumed = (pd.read_csv(tmp_path / d / "history.csv") for d in ("whole", "killed"))
    assert list(resumed[["stage", "epoch"]].itertuples(index=False, name=None)) == [(1, 0), (2, 0), (2, 1), (2, 2)]
    pd.testing.assert_frame_equal(whole.drop(columns="time"), resumed.drop(columns="time"))
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pth", weights_only=True) for d in ("whole", "killed"))
    assert b["stage_done"] and b["stage"] == 1
    for k in a["model"]: assert torch.equal(a["model"][k], b["model"][k]), k  # bit-identical on CPU
    for k in ("model.pth",):
        wa, wb = (torch.load(tmp_path / d / "model" / k, weights_only=True) for d in ("whole", "killed"))
        assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    "fastai's random states, saved as last.pth saves them, restore every generator (and old checkpoints' keys load)."
    import random

    import numpy as np
    from fastai.test_utils import synth_learner

    from cxr_fast.training.checkpoints import OLD_RNG_KEYS, rng_state, set_rng_state
    learn = synth_learner(n_trn=3)
    torch.save(rng_state(learn), tmp_path / "rng.pth")
    draw = lambda: (random.random(), np.random.rand(), torch.rand(1).item(), learn.dls.train.rng.random())
    first = draw()
    state = torch.load(tmp_path / "rng.pth", weights_only=True)
    set_rng_state(learn, state)
    assert draw() == first
    set_rng_state(learn, {({v: k for k, v in OLD_RNG_KEYS.items()}).get(k, k): v for k, v in state.items()})
    assert draw() == first


class FlatMonitor(Callback):
    "Make valid_loss look flat, so early stopping fires deterministically."
    order = 55  # after the Recorder, before the trackers

    def after_epoch(self):
        if self.recorder.values and self.recorder.values[-1]: self.recorder.values[-1][1] = 1.0


def test_early_stopping_ends_a_stage_and_the_next_runs(phantoms, tmp_path):
    train(table=phantoms["3class"], out=tmp_path / "run", plan="all:4@1e-3,all:1@1e-4", patience=1,
          cbs=[FlatMonitor()], **TINY)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history[["stage", "epoch"]].itertuples(index=False, name=None)) == [(1, 0), (1, 1), (2, 0)]


# ---- weights, lr_find, multi-label focal, imbalance ------------------------------------------

@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")  # fastai's learn.load in lr_find
def test_multilabel_focal_with_lr_find_and_transfer(phantoms, tmp_path):
    table = phantoms["multilabel"]
    train(table=table, out=tmp_path / "a", plan="all:1@auto", lr_find=True, loss="focal", **TINY)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["lr_suggestion"] > 0
    meta = json.loads((tmp_path / "a" / "model" / "model.json").read_text())
    assert meta["loss"] == "focal" and meta["multilabel"] and meta["thresholds"] == {c: 0.5 for c in meta["classes"]}
    dls = get_dls(table, size=32, bs=8, num_workers=0)
    learn = cxr_learner(dls, "test_resnet", pretrained=False, weights=tmp_path / "a")
    saved = torch.load(tmp_path / "a" / "model" / "model.pth", weights_only=True)
    body = learn.model[0].state_dict()
    assert all(torch.equal(body[k[2:]], v) for k, v in saved.items() if k.startswith("0."))
    assert not any(p.requires_grad for p in learn.model[0].parameters() if p.ndim > 1)  # frozen, like pretrained


def test_imbalance_options(phantoms):
    table = phantoms["3class"]
    train_counts = table.loc[table.split == "train", "label"].value_counts()
    sub = subsample_majority_train(table, 0.5, seed=0)
    majority = train_counts.idxmax()
    assert sub.attrs["subsampled"]["class"] == majority
    for split in ("valid", "test"):
        assert sub[sub.split == split]["path"].tolist() == table[table.split == split]["path"].tolist()
    assert (sub.split == "train").sum() < (table.split == "train").sum()
    w = sampling_weights(table)
    labels = table.loc[table.split == "train", "label"].to_numpy()
    assert len(w) == len(labels)
    assert {c: pytest.approx(w[labels == c].sum()) for c in train_counts.index} == {c: 1.0 for c in train_counts.index}
    auto = class_weight_values(table, "auto")
    inv = np.array([1 / train_counts[c] for c in table.attrs["classes"]])
    assert auto == pytest.approx(list(inv / inv.mean()), rel=1e-5)
    with pytest.raises(CxrError, match="needs 3 numbers"): class_weight_values(table, [1, 2])


def test_with_the_real_evaluation(phantoms, tmp_path, real_evaluation):
    evaluation = pytest.importorskip("cxr_fast.evaluation.runs")
    if not hasattr(evaluation, "evaluate_run"): pytest.skip("evaluation.evaluate_run not written yet")
    table = build_table("phantom", tmp_path / "ph", "binary", patients_per_class=4, image_size=48, test_pct=0.25)
    result = train(table=table, out=tmp_path / "run", plan="all:1@1e-3", tta=True, **TINY)
    assert {"valid", "test", "thresholds", "run_dir"} <= set(result)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["thresholds"] == result["thresholds"] and set(meta["metrics"]) == {"valid", "test"}
    assert meta["tta"] is True and any("test-time augmentation" in n for n in result["valid"]["notes"])
    assert "test-time augmentation" in (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()


def test_frozen_weights_stay_put_after_unfreezing(phantoms):
    "fastai leaves zero gradients on re-frozen weights, so weight decay would still shrink them; not here."
    learn = cxr_learner(get_dls(phantoms["3class"], size=32, bs=8, num_workers=0), "test_resnet", pretrained=False,
                        train_bn=False, wd=0.1)
    fit_stage(learn, parse_plan("all:1@1e-3", 1e-3)[0])
    before = {k: v.clone() for k, v in learn.model[0].state_dict().items() if v.is_floating_point()}
    fit_stage(learn, parse_plan("head:1@1e-3", 1e-3)[0])
    after = learn.model[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k)
