"""--tracker: a tiny run logged to every offline tracker (CSV, TensorBoard, MLflow file store, W&B offline), read back."""
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fastai.callback.core import Callback

from cxr_fast.training import tracking
from cxr_fast.core.errors import CxrError
from cxr_fast.data.table import build_table
from cxr_fast.training.run import train

TINY = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", save_best=False)
PLAN = "head:1@1e-3,all:1@1e-3"  # two stages: the step count must continue across them
AVAILABLE = [n for n, pkg in tracking.PACKAGES.items() if pkg is None or importlib.util.find_spec(pkg)]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return build_table("phantom", tmp_path_factory.mktemp("ph") / "3class", "3class", patients_per_class=4,
                       image_size=32)


@pytest.fixture(scope="module")
def tracked(table, tmp_path_factory):
    "One run logged to every tracker installed here (W&B offline, MLflow to a file store in tmp)."
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"): mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    root = tmp_path_factory.mktemp("tracked")
    run_dir = root / "exp" / "run1"
    result = train(table=table, out=run_dir, plan=PLAN, tracker=",".join(AVAILABLE), **TINY)
    yield {"run_dir": run_dir, "result": result, "parent": root / "exp"}
    mp.undo()


def test_parse_trackers_checks_names_and_packages(monkeypatch):
    assert tracking.parse_trackers("csv") == ["csv"]
    assert tracking.parse_trackers(None) == [] and tracking.parse_trackers("none") == []
    with pytest.raises(CxrError, match="unknown; choose from csv, tensorboard, mlflow, wandb"):
        tracking.parse_trackers("csv,comet")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CxrError, match=r"needs the mlflow package: pip install 'cxr_fast\[track\]'"):
        tracking.parse_trackers("mlflow")


def test_a_backend_is_imported_only_when_a_run_uses_it():
    "(wandb itself is not checked: timm imports it when it is installed)"
    backends = [f"cxr_fast.training.tracking.{n}_tracker" for n in ("tensorboard", "mlflow", "wandb")]
    watched = [*backends, "tensorboard", "mlflow", "fastai.callback.tensorboard", "fastai.callback.wandb"]
    code = ("import sys; import cxr_fast.training.run; from cxr_fast.training import tracking; "
            f"tracking.run_hooks('r', 'csv'); print([m for m in {watched!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_csv_tracker(tracked):
    run_dir = tracked["run_dir"]
    epochs = pd.read_csv(run_dir / "epochs.csv")  # fastai's CSVLogger, both stages in one file, one header
    assert len(epochs) == 2 and {"train_loss", "valid_loss", "accuracy"} <= set(epochs.columns)
    final = pd.read_csv(run_dir / "final_metrics.csv").set_index("metric")["value"]
    assert final["valid_accuracy"] == pytest.approx(tracked["result"]["valid"]["accuracy"])
    assert json.loads((run_dir / "config.json").read_text())["tracker"] == AVAILABLE


@pytest.mark.skipif("tensorboard" not in AVAILABLE, reason="tensorboard not installed")
def test_tensorboard_tracker_event_files(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log_dir = tracked["parent"] / "tensorboard" / "run1"
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    valid = acc.Scalars("valid_loss")
    assert len(valid) == 2 and valid[0].step < valid[1].step  # one step count over both stages
    assert len(acc.Scalars("train_loss")) >= 2
    final = acc.Scalars("final/valid_accuracy")[0].value
    assert final == pytest.approx(tracked["result"]["valid"]["accuracy"])
    assert any(t.startswith("figures/confusion") for t in tags["images"])
    assert any(t.startswith("config") for t in tags["tensors"])  # text summaries are stored as tensors


@pytest.mark.skipif("mlflow" not in AVAILABLE, reason="mlflow not installed")
def test_mlflow_tracker_file_store(tracked):
    from mlflow.tracking import MlflowClient
    store = tracked["parent"] / "mlruns"
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("exp")  # the parent folder's name
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run1"
    assert run.data.params["arch"] == "test_resnet" and json.loads(run.data.params["plan"])[1]["train"] == "all"
    history = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [m.step for m in history] == [0, 1]
    assert run.data.metrics["valid_accuracy"] == pytest.approx(tracked["result"]["valid"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"figures", "model", "config.json", "metrics.json", "report.md"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model.json", "model.pth"} <= model_files
    # the file store on disk, as `mlflow ui --backend-store-uri` reads it
    assert (store / experiment.experiment_id / run.info.run_id / "metrics" / "valid_loss").is_file()


def wandb_records(path, block=32768):
    "The protobuf records of an offline W&B run file (LevelDB log format: 7-byte header, 32 KiB blocks)."
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


@pytest.mark.skipif("wandb" not in AVAILABLE, reason="wandb not installed")
def test_wandb_tracker_offline_run(tracked):
    (run_file,) = (tracked["parent"] / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, config, artifacts = {}, {}, {}, []
    key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item: history.setdefault(key(item), []).append(json.loads(item.value_json))
        elif kind == "summary":
            for item in record.summary.update: summary[key(item)] = json.loads(item.value_json)
        elif kind == "run":
            for item in record.run.config.update: config[key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append((record.artifact.name, record.artifact.type))
    assert len(history["valid_loss"]) == 2 and "train_loss" in history
    assert summary["valid_accuracy"] == pytest.approx(tracked["result"]["valid"]["accuracy"])
    assert config["arch"] == "test_resnet"
    assert ("model-run1", "model") in artifacts
    assert list((run_file.parent / "files" / "media" / "images").rglob("confusion_valid*.png"))


class Boom(Callback):
    "Fails the run after its first epoch."
    order = 90

    def after_epoch(self): raise RuntimeError("boom")


@pytest.mark.skipif("mlflow" not in AVAILABLE, reason="mlflow not installed")
def test_context_tracker_reaches_train_and_a_failed_run_is_closed(table, tmp_path, monkeypatch):
    "tracking_context (what recipe --tracker uses) sets the tracker of every train() inside; a crash ends it FAILED."
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ctx")
    with tracking.tracking_context(tracker="csv,mlflow", tracker_dir=tmp_path / "store"):
        with pytest.raises(RuntimeError, match="boom"):
            train(table=table, out=tmp_path / "broken", epochs=2, cbs=[Boom()], **TINY)
    assert len(pd.read_csv(tmp_path / "broken" / "epochs.csv")) == 1
    client = MlflowClient(tracking_uri=(tmp_path / "store" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("ctx").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FAILED"
    assert tracking.context_tracker() is None  # the block's trackers end with it
    # --resume continues the same MLflow run (and epochs.csv), the step count after the epoch it had
    train(table=table, out=tmp_path / "broken", epochs=2, resume=True, tracker="csv,mlflow",
          tracker_dir=tmp_path / "store", **TINY)
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [0, 1]
    assert len(pd.read_csv(tmp_path / "broken" / "epochs.csv")) == 2
