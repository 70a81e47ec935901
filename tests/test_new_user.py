"""Issue #23, rough edges a new user hits, each run the way a user types it (cxr_fast.cli.main, or a subprocess):
a small train split trains (batch fitted, one line) instead of taking no step; TensorBoard on such a run; files
left out are counted on the console; predict --engine onnx exports on first use; the Kaggle-offline wheelhouse
installs with --no-index (slow)."""
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import save_gray
from cxr_fast.cli import main
from cxr_fast.core.errors import DataError
from cxr_fast.training.learner import fit_batch_size

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["COVID-19", "Normal", "Pneumonia"]
TINY = ["--arch", "test_resnet", "--pretrained", "false", "--epochs", "1", "--size", "32", "--num-workers", "0",
        "--aug", "none"]


def class_folders(root, per_class=12, size=40):
    "One folder per class, `per_class` PNGs each: 36 images put 29 in train at the default --valid-pct 0.2."
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            save_gray(root / cls / f"{cls}-{i}.png", seed=100 * c + i, size=size, bright_spot=cls != "Normal")
    return root


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    "`train folders` on 36 good images + a truncated PNG + a text file named .png, default --bs 32."
    root = class_folders(tmp_path_factory.mktemp("small") / "data")
    good = (root / "Normal" / "Normal-0.png").read_bytes()
    (root / "Normal" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "COVID-19" / "notes.png").write_text("not an image, named like one")
    run_dir = root.parent / "run"
    capture = pytest.MonkeyPatch()
    out = Path(tmp_path_factory.mktemp("out")) / "stdout.txt"
    with open(out, "w") as f:
        capture.setattr(sys, "stdout", f)
        rc = main(["train", "folders", str(root), "--task", "3class", *TINY, "--out", str(run_dir)])
    capture.undo()
    return {"rc": rc, "stdout": out.read_text(), "run_dir": run_dir, "root": root}


# ---- 1. a run that trains nothing ------------------------------------------------------------

def test_a_small_train_split_trains_with_a_fitted_batch(small_run):
    assert small_run["rc"] == 0
    lines = [line for line in small_run["stdout"].splitlines() if line.startswith("batch size")]
    assert lines == ["batch size 29 (asked for 32): the train split has 29 images, and fastai drops an incomplete "
                     "last batch"]
    history = pd.read_csv(small_run["run_dir"] / "history.csv")
    assert np.isfinite(history["train_loss"]).all()  # an optimiser step ran (was nan: no batch at all)
    config = json.loads((small_run["run_dir"] / "config.json").read_text())
    assert config["bs"] == 32 and config["bs_used"] == 29


def test_fit_batch_size_per_process_and_too_small_a_split():
    assert fit_batch_size(32, 100) == (32, None)
    assert fit_batch_size(32, 29)[0] == 29
    bs, note = fit_batch_size(32, 29, processes=2)  # fastai's DistributedDL pads each shard to ceil(29 / 2)
    assert bs == 15 and "15 per process of 2" in note
    with pytest.raises(DataError, match="train split has 1 image"): fit_batch_size(32, 1)


def test_a_train_split_of_one_image_is_a_one_line_error(tmp_path, capsys):
    rows = []
    for i, (split, label) in enumerate([("train", "Normal"), ("valid", "Normal"), ("valid", "Pneumonia")]):
        path = save_gray(tmp_path / f"im{i}.png", seed=i, size=40)
        rows.append({"path": str(path), "patient_id": f"p{i}", "split": split, "source": "x", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    rc = main(["train", "table", str(tmp_path / "table.csv"), *TINY, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: the train split has 1 image(s)") and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "model").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_tracker_on_a_small_split_from_the_command_line(tmp_path, capsys):
    root = class_folders(tmp_path / "data")
    rc = main(["train", "folders", str(root), "--task", "3class", *TINY, "--out", str(tmp_path / "runs" / "tb"),
               "--tracker", "tensorboard"])
    assert rc == 0 and "batch size 29" in capsys.readouterr().out
    assert list((tmp_path / "runs" / "tensorboard" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_callback_survives_an_epoch_without_a_training_batch(tmp_path):
    "fastai's TensorBoardCallback read learn.smooth_loss after valid batches, which an epoch of no step lacks."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from cxr_fast.training.tracking.tensorboard_tracker import TensorBoardTracker
    items = [(torch.randn(4), torch.randn(1)) for _ in range(5)]
    dls = DataLoaders(DataLoader(items, bs=8, shuffle=True, drop_last=True), DataLoader(items, bs=8))
    learn = Learner(dls, torch.nn.Linear(4, 1), loss_func=torch.nn.MSELoss())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=TensorBoardTracker(tmp_path / "run").callbacks())


# ---- 4. files left out, on the console -------------------------------------------------------

def test_train_says_how_many_files_it_left_out_and_where(small_run):
    lines = [line for line in small_run["stdout"].splitlines() if line.startswith("left out")]
    run_dir = small_run["run_dir"]
    assert lines == [f"left out 2 file(s) (unreadable 2): listed in {run_dir / 'table.json'} and, at the end of "
                     f"the run, {run_dir / 'report.md'}"]
    report = (run_dir / "report.md").read_text()
    assert "truncated.png" in report and "notes.png" in report


def test_predict_says_how_many_files_it_skipped_or_could_not_read(small_run, tmp_path, capsys):
    folder = tmp_path / "scans"
    save_gray(folder / "a.png", seed=1, size=40)
    (folder / "notes.txt").write_text("a note")
    (folder / "fake.png").write_text("not a PNG")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(small_run["run_dir"] / "model"), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if line.startswith("skipped")]
    unread = [line for line in err if "could not be read" in line]
    assert len(skipped) == 1 and "skipped 1 non-image file(s)" in skipped[0] and "notes.txt" in skipped[0]
    assert len(unread) == 1 and unread[0].startswith(f"1 of 2 image(s) could not be read: their rows in {out}")
    preds = pd.read_csv(out, keep_default_na=False)
    assert preds.loc[preds["path"].str.endswith("fake.png"), "error"].str.len().iloc[0] > 0


# ---- 3. predict --engine onnx exports on first use -------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    "A tiny untrained model dir (no model.onnx) and a folder of 3 images."
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cxr_fast.models.folder import save_model_dir
    from cxr_fast.models.registry import build_model, default_head
    root = tmp_path_factory.mktemp("onnx_first_use")
    torch.manual_seed(0)
    meta = {"arch": "test_resnet", "head": default_head(), "n_out": 3, "classes": CLASSES, "task": "3class",
            "multilabel": False, "loss": "ce", "img_size": 32, "resize_method": "squish", "preprocessing": "none",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "thresholds": {},
            "data": {}, "metrics": {}}
    mdir = save_model_dir(build_model("test_resnet", 3, default_head()).eval(), root / "model", meta)
    for i in range(3): save_gray(root / "images" / f"im{i}.png", seed=i, size=40)
    return mdir, root / "images"


def predict_onnx(model_dir, images, out, capsys):
    rc = main(["predict", str(model_dir), str(images), "--engine", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("onnx engine:")], err


def test_onnx_engine_exports_on_first_use_then_reuses_and_refreshes(onnx_model, tmp_path, capsys):
    import shutil
    mdir = tmp_path / "model"
    shutil.copytree(onnx_model[0], mdir)
    images = onnx_model[1]
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p1.csv", capsys)
    assert rc == 0 and (mdir / "model.onnx").is_file() and len(said) == 1
    assert f"no model.onnx in {mdir}; exporting it now" in said[0]
    assert len(pd.read_csv(tmp_path / "p1.csv")) == 3
    assert not [p for p in mdir.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p2.csv", capsys)
    assert rc == 0 and said == []  # reused
    meta = json.loads((mdir / "model.json").read_text())
    meta["thresholds"] = {"COVID-19": 0.4}  # another description than at export: stale
    (mdir / "model.json").write_text(json.dumps(meta))
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p3.csv", capsys)
    assert rc == 0 and len(said) == 1 and "is stale" in said[0]
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p4.csv", capsys)
    assert rc == 0 and said == []


def test_onnx_engine_on_a_read_only_model_dir_exports_to_the_cache(onnx_model, tmp_path, capsys, monkeypatch):
    from cxr_fast.inference import onnx_file
    mdir, images = onnx_model
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXR_FAST_ONNX_CACHE", str(cache))
    monkeypatch.setattr(onnx_file, "writable", lambda folder: False)  # as a Kaggle input (root ignores chmod)
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p1.csv", capsys)
    exported = list(cache.glob("*/model.onnx"))
    assert rc == 0 and len(exported) == 1 and not (mdir / "model.onnx").exists()
    assert len(said) == 1 and "is read-only" in said[0] and str(exported[0]) in said[0]
    rc, said, _ = predict_onnx(mdir, images, tmp_path / "p2.csv", capsys)
    assert rc == 0 and said == []


def test_onnx_engine_without_the_extra_is_a_one_line_error(onnx_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    rc, _, err = predict_onnx(onnx_model[0], onnx_model[1], tmp_path / "p.csv", capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'pip install "cxr_fast[onnx]"' in err


# ---- 2. the Kaggle-offline wheelhouse --------------------------------------------------------

KAGGLE_HAS = ("torch", "torchvision", "fastai", "timm", "pandas", "scikit-learn", "matplotlib", "kaggle")


def registry_reachable():
    "Whether pip's package index answers (the wheelhouse is downloaded from it)."
    try:
        urllib.request.urlopen("https://pypi.org/simple/termcolor/", timeout=10).close()
        return True
    except Exception:
        return False


def kaggle_like_venv(path):
    """A virtual environment holding what a Kaggle image has and nothing else: KAGGLE_HAS and their dependencies,
    linked from this Python's site-packages (no download), so pip sees them installed there."""
    import importlib.metadata as md
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next((path / "lib").glob("python3*/site-packages"))
    env, seen, todo = default_environment(), set(), [(name, "") for name in KAGGLE_HAS]
    while todo:
        name, extra = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, extra) in seen: continue
        seen.add((key, extra))
        for req in map(Requirement, dist.requires or []):  # with the extras asked for (torch: cuda-toolkit[cudart])
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
        for f in dist.files or []:
            top = Path(f).parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"): continue
            source, link = Path(dist.locate_file(top)), site / top
            if source.exists() and not link.exists(): link.symlink_to(source)
    return path / "bin" / "python", {key for key, _ in seen}


@pytest.mark.slow
def test_wheelhouse_installs_offline_into_what_kaggle_has(tmp_path):
    if not registry_reachable(): pytest.skip("the package registry is not reachable: cannot build the wheelhouse")
    wheelhouse = tmp_path / "wheelhouse"
    done = subprocess.run(["make", "wheelhouse", f"WHEELHOUSE={wheelhouse}", f"PYTHON={sys.executable}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"cxr_fast", "fire", "termcolor"} <= names and "torch" not in names
    python, has = kaggle_like_venv(tmp_path / "kaggle")
    assert "termcolor" not in has and "fire" not in has  # the environment really lacks them
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    install = subprocess.run([str(python), "-m", "pip", "--isolated", "install", "--no-index", "--find-links",
                              str(wheelhouse), "cxr_fast[weights]"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    helped = subprocess.run([str(python), "-m", "cxr_fast", "--help"], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert helped.returncode == 0 and "train" in helped.stdout
    data = class_folders(tmp_path / "data", per_class=6)
    trained = subprocess.run([str(python), "-m", "cxr_fast", "train", "folders", str(data), "--task", "3class", *TINY,
                              "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    where = subprocess.run([str(python), "-c", "import cxr_fast; print(cxr_fast.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path).stdout
    assert str(tmp_path / "kaggle") in where  # the installed wheel ran, not this checkout
