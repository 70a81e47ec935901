"""`--members N`: a deep ensemble trained from the command line, predicted, explained, and resumed after a kill."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback

from cxr_fast import cli
from cxr_fast.core.errors import CxrError
from cxr_fast.data.table import build_table
from cxr_fast.inference.gradcam import _unit_range, gradcam
from cxr_fast.models import folder as modelio
from cxr_fast.models.ensemble import Ensemble
from cxr_fast.models.registry import build_model
from cxr_fast.training.members import check_members
from cxr_fast.training.run import train

TINY = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", audit=False)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    return build_table("phantom", root, "3class", patients_per_class=6, image_size=48, test_pct=0.2)


def member_logits(run, x):
    "Each member's logits, from the weights the run kept for it (members/K/weights.pth)."
    meta = json.loads((run / "model" / "model.json").read_text())
    out = []
    for k in range(meta["members"]):
        model = build_model(meta["arch"], meta["n_out"], meta["head"])
        model.load_state_dict(torch.load(run / "members" / str(k) / "weights.pth", weights_only=True))
        with torch.no_grad(): out.append(model.eval()(x))
    return out


def test_cli_trains_an_ensemble_that_predict_loads(phantoms, tmp_path, capsys):
    root, out = Path(phantoms["path"][0]).parent, tmp_path / "run"
    code = cli.main(["train", "phantom", str(root), "--task", "3class", "--arch", "test_resnet", "--out", str(out),
                     "--pretrained", "false", "--plan", "head:1@1e-3,all:1@1e-5:1e-3", "--size", "32", "--bs", "8",
                     "--num-workers", "0", "--aug", "none", "--patients-per-class", "6", "--test-pct", "0.2",
                     "--members", "2", "--audit", "false"])
    printed = capsys.readouterr().out
    assert code == 0 and "member 1 of 2 (seed 42)" in printed and "member 2 of 2 (seed 43)" in printed
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["members"] == 2 and meta["card"]["architecture"]["members"] == 2
    assert "an ensemble of 2" in (out / "model" / "MODEL_CARD.md").read_text()
    assert "An ensemble of 2 members (seeds 42..43" in (out / "report.md").read_text()
    history = pd.read_csv(out / "history.csv")
    assert list(history[["member", "stage"]].itertuples(index=False, name=None)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    model, _ = modelio.load_model_module(out / "model")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first, second = member_logits(out, x)
    assert not torch.allclose(first, second)  # different seeds, different members
    with torch.no_grad(): assert torch.allclose(model(x), (first + second) / 2, atol=1e-5)
    image = phantoms.loc[phantoms["split"] == "test", "path"].iloc[0]
    assert cli.main(["predict", str(out / "model"), image, "--out", str(tmp_path / "preds.csv")]) == 0
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 1 and preds["pred"].iloc[0] in meta["classes"]


class KillInSecondMember(Callback):
    "A crash in the first batch of member 2's first stage (member 1 done; fits are counted across members)."
    fits = 0

    def before_fit(self): type(self).fits += 1

    def before_batch(self):
        if type(self).fits == 3: raise KeyboardInterrupt("simulated kill")


def test_an_interrupted_ensemble_resumes_without_training_a_finished_member_again(phantoms, tmp_path, capsys):
    kw = dict(table=phantoms, plan="head:1@1e-3,all:1@1e-5:1e-3", members=2, seed=5, **TINY)
    train(out=tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt): train(out=tmp_path / "killed", cbs=[KillInSecondMember()], **kw)
    assert "continue with --resume true (from" in capsys.readouterr().out
    first = tmp_path / "killed" / "members" / "0" / "weights.pth"
    assert first.is_file() and not (tmp_path / "killed" / "members" / "1" / "weights.pth").exists()
    stamp = first.stat().st_mtime_ns
    train(out=tmp_path / "killed", resume=True, **kw)
    assert "member 1 of 2: trained before" in capsys.readouterr().out and first.stat().st_mtime_ns == stamp
    a, b = (torch.load(tmp_path / d / "model" / "model.pth", weights_only=True) for d in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never interrupted
    train(out=tmp_path / "killed", overwrite=True, **{**kw, "members": 1})
    assert not (tmp_path / "killed" / "members").exists()  # a run started again leaves no stale members behind


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members_maps():
    torch.manual_seed(0)
    members = [build_model("resnet18", 3), build_model("resnet18", 3)]
    ensemble = Ensemble(members).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(): target = ensemble(x).argmax(1).tolist()
    maps = [torch.from_numpy(gradcam(m, x, target=target)) for m in members]
    got = gradcam(ensemble, x)
    assert got.shape == (2, 64, 64) and got.min() >= 0 and got.max() <= 1
    assert np.allclose(got, _unit_range(torch.stack(maps).mean(0)).numpy(), atol=1e-5)
    assert not np.allclose(got, maps[0].numpy(), atol=1e-3)  # not just one member's map


def test_members_option_errors():
    with pytest.raises(CxrError, match="--members must be >= 1"): train(members=0)
    with pytest.raises(CxrError, match="one process"): check_members({"members": 2, "processes": 2})
    check_members({"members": 1, "processes": 2})  # a single model may be launched as several processes
