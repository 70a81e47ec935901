"""Data-parallel training: two CPU processes (gloo) through Accelerate and fastai's DistributedTrainer, on phantoms."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxr_fast.training import distributed
from cxr_fast.core.errors import CxrError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "test_resnet", "--pretrained", "false", "--size", "32", "--bs", "4", "--num-workers", "0",
        "--aug", "none", "--save-best", "false", "--plan", "head:1@1e-3,all:1@1e-3"]
needs_accelerate = pytest.mark.skipif(__import__("importlib").util.find_spec("accelerate") is None,
                                      reason="accelerate not installed")


def test_options_and_launch_argv():
    assert distributed.strip_option(["train", "a", "--distributed", "2", "--out", "r", "--distributed=3"],
                                    "distributed") == ["train", "a", "--out", "r"]
    assert distributed.num_processes_option(None) == 0 and distributed.num_processes_option("false") == 0
    assert distributed.num_processes_option(3) == 3 and distributed.num_processes_option(1) == 0
    assert distributed.num_processes_option("true") >= 2
    cmd = distributed.launch_argv(["train", "x"], 2, python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"] and cmd[-4:] == ["-m", "cxr_fast", "train", "x"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.trainer_callbacks() == []
    model = torch.nn.Linear(2, 2)
    assert distributed.unwrap(model) is model and distributed.broadcast_object(5) == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_sync_bn_needs_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CxrError, match="--sync-bn needs CUDA"): distributed.trainer_callbacks(sync_bn=True)


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory):
    "A canonical table CSV of phantoms (valid split of odd size: the last shard is padded), written once."
    from cxr_fast.data.table import build_table, write_table
    root = tmp_path_factory.mktemp("ph")
    table = build_table("phantom", root / "3class", "3class", patients_per_class=4, image_size=32)
    assert (table["split"] == "valid").sum() % 2 == 1
    write_table(table, root / "table.csv")
    return root / "table.csv"


def run(cmd, cwd, timeout=420):
    "A bounded subprocess with one torch thread per process; (returncode, output)."
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def single_process_valid_loss(run_dir):
    "The valid loss of the saved model, computed in this (one) process over the whole valid split."
    from cxr_fast.data.table import read_table
    from cxr_fast.training.learner import build_learner
    config = json.loads((run_dir / "config.json").read_text())
    learn = build_learner(config, read_table(run_dir / "table.csv"), run_dir)
    learn.model.load_state_dict(torch.load(run_dir / "model" / "model.pth", weights_only=True))
    return float(learn.validate()[0])


@needs_accelerate
def test_two_cpu_processes_train_one_run_folder(phantom_csv, tmp_path):
    "train --distributed 2: accelerate launch, gloo; the main process writes a complete folder, the model predicts."
    out = tmp_path / "ddp"
    code, log = run([sys.executable, "-m", "cxr_fast", "train", "table", str(phantom_csv), "--out", str(out),
                     "--distributed", "2", *TINY], cwd=tmp_path)
    assert code == 0, log[-4000:]
    assert "accelerate.commands.launch" in log and log.count("run folder:") == 1  # one summary: the main process's
    for name in ("config.json", "table.csv", "history.csv", "metrics.json", "report.md", "checkpoints/last.pth",
                 "model/model.json", "model/model.pth"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")) and json.loads((out / "config.json").read_text())["processes"] == 2
    history = pd.read_csv(out / "history.csv")
    assert list(history["stage"]) == [1, 2]
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)  # the plain model's keys, not DDP's
    # the per-epoch valid loss is the whole valid set's (gathered, padding removed), not one shard's
    assert history["valid_loss"].iloc[-1] == pytest.approx(single_process_valid_loss(out), rel=1e-4)
    from cxr_fast.inference.predictor import load_model
    table = pd.read_csv(phantom_csv)
    preds = load_model(out / "model").predict(list(table["path"][:3]))
    assert len(preds) == 3 and (preds["error"].fillna("") == "").all()
    assert set(preds["pred"]) <= set(json.loads((out / "model" / "model.json").read_text())["classes"])


STOP_AFTER_FIRST_EPOCH = """
import sys
from fastai.callback.core import Callback
import cxr_fast

class Stop(Callback):
    order = 90  # after last.pth is written
    def after_epoch(self): raise SystemExit(3)

cxr_fast.train("table", sys.argv[1], out=sys.argv[2], cbs=[Stop()], arch="test_resnet", pretrained=False, size=32,
               bs=4, num_workers=0, aug="none", save_best=False, plan="head:1@1e-3,all:1@1e-3")
"""


@needs_accelerate
@pytest.mark.slow
def test_two_process_run_resumes(phantom_csv, tmp_path):
    "A two-process run killed after its first epoch continues under `accelerate launch ... --resume true`."
    script = tmp_path / "stop.py"
    script.write_text(STOP_AFTER_FIRST_EPOCH)
    out = tmp_path / "resumed"
    code, log = run(distributed.launch_argv([str(phantom_csv), str(out)], 2)[:-4] + [str(script), str(phantom_csv),
                                                                                          str(out)], cwd=tmp_path)
    assert code != 0 and len(pd.read_csv(out / "history.csv")) == 1, log[-3000:]
    assert not (out / "metrics.json").exists()
    code, log = run(distributed.launch_argv(["train", "table", str(phantom_csv), "--out", str(out), "--resume", "true",
                                                *TINY], 2), cwd=tmp_path)
    assert code == 0, log[-4000:]
    assert "resuming" in log and (out / "metrics.json").is_file() and (out / "model" / "model.pth").is_file()
    assert list(pd.read_csv(out / "history.csv")["stage"]) == [1, 2]
