"""tune: the search space, the objective, pruning, the summary, and two workers sharing one study."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr_fast.core.errors import CxrError
from cxr_fast.data.table import build_table
from cxr_fast.apps.tune import (Param, RecipeTarget, TrainTarget, make_objective, open_storage, parse_space,
                                pruning_monitor, tune)

optuna = pytest.importorskip("optuna")

FIXED = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", save_best=False)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    "A phantom dataset generated once (workers only read it: two processes must not generate into one folder)."
    root = tmp_path_factory.mktemp("ph") / "3class"
    build_table("phantom", root, "3class", patients_per_class=4, image_size=32)
    return root


def test_inline_space():
    space = parse_space("lr=1e-4..1e-2:log; epochs=1..3; size=32|64; aug=cxr|none; bs=8; "
                        "plan=head:1@1e-3|head:1@1e-3,all:1@1e-4; dropout=0.1..0.5:step=0.1")
    assert space["lr"] == Param("lr", "float", 1e-4, 1e-2, log=True)
    assert space["epochs"].kind == "int" and (space["epochs"].low, space["epochs"].high) == (1, 3)
    assert space["size"].choices == [32, 64] and space["aug"].choices == ["cxr", "none"]
    assert space["bs"].kind == "fixed" and space["bs"].choices == [8]
    assert space["plan"].choices == ["head:1@1e-3", "head:1@1e-3,all:1@1e-4"]  # commas stay inside a choice
    assert space["dropout"].kind == "float" and space["dropout"].step == 0.1


def test_space_files(tmp_path):
    spec = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 2},
            "arch": ["resnet18", "test_resnet"], "bs": 8}
    (tmp_path / "space.json").write_text(json.dumps(spec))
    space = parse_space(str(tmp_path / "space.json"))
    assert space["lr"].log and space["epochs"].kind == "int" and space["arch"].kind == "categorical"
    yaml = pytest.importorskip("yaml")
    (tmp_path / "space.yaml").write_text("space:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n  aug: [cxr, none]\n")
    assert parse_space(str(tmp_path / "space.yaml"))["aug"].choices == ["cxr", "none"]
    assert yaml


@pytest.mark.parametrize("spec, message", [
    ("lr=1e-2..1e-4", "needs low < high"), ("lr=0..1:log", "log range needs low > 0"), ("lr", "write NAME=SPEC"),
    ("lr=1..2:fast", "unknown range flag"), ("", "--space is required"), ("a.yaml", "file not found"),
])
def test_space_errors(spec, message):
    with pytest.raises(CxrError, match=message): parse_space(spec)


def test_names_are_checked_before_any_trial(phantom_root):
    target = TrainTarget("phantom", phantom_root, "3class", **FIXED)
    target.check(parse_space("lr=1e-4..1e-2:log; patients_per_class=2..4"))  # a source option is fine
    with pytest.raises(CxrError, match="neither train nor source phantom has such a parameter"):
        target.check(parse_space("learning_rate=1e-4..1e-2"))
    with pytest.raises(CxrError, match="has no parameter --nope"):
        RecipeTarget("resnet18", quick=True).check(parse_space("nope=1|2"))
    from cxr_fast.data.load import source_option_names
    assert "patients_per_class" in source_option_names("phantom+nope") and source_option_names("table") == []


def test_pruning_monitor_signs():
    assert pruning_monitor("macro_f1", "maximize") == ("f1_score", 1.0)
    assert pruning_monitor("auc", "maximize") == ("valid_loss", -1.0)  # no per-epoch AUC: the loss, sign turned
    assert pruning_monitor("auc", "minimize") == ("valid_loss", 1.0)
    assert pruning_monitor("accuracy", "minimize") == ("accuracy", -1.0)


def test_tune_train_writes_trials_and_summary(phantom_root, tmp_path):
    out = tmp_path / "sweep"
    summary = tune(TrainTarget("phantom", phantom_root, "3class", **FIXED),
                   "lr=1e-4..1e-2:log; epochs=1|2; plan=all:1@1e-3|head:1@1e-3,all:1@1e-3",
                   trials=2, metric="accuracy", storage=f"journal:{tmp_path / 'study.log'}", out=out)
    assert summary["trials"] == 2 and summary["complete"] == 2 and summary["study"] == "sweep"
    for trial in range(2):
        run = out / f"trial-{trial:04d}"
        assert (run / "metrics.json").is_file() and (run / "model" / "model.json").is_file()
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == [0, 1] and set(trials["state"]) == {"COMPLETE"}
    compare = (out / "compare.md").read_text()
    assert "trial-0000" in compare and "trial-0001" in compare
    for png in ("history.png", "importance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", summary["notes"]
    best = json.loads((out / "best.json").read_text())["best"]
    argv = shlex.split((out / "best_command.txt").read_text())
    assert argv[:6] == ["python", "-m", "cxr_fast", "train", "phantom", str(phantom_root)]
    options = dict(zip(argv[6::2], argv[7::2]))
    assert float(options["--lr"]) == pytest.approx(best["params"]["lr"]) and options["--arch"] == "test_resnet"
    assert options["--out"] == "runs/best" and options["--plan"] == best["params"]["plan"]
    # the trial's run folder trained with the trial's parameters
    config = json.loads((Path(best["run_dir"]) / "config.json").read_text())
    assert config["lr"] == pytest.approx(best["params"]["lr"])
    again = tune(TrainTarget("phantom", phantom_root, "3class", **FIXED), "lr=1e-4..1e-2:log", trials=0,
                 metric="accuracy", storage=f"journal:{tmp_path / 'study.log'}", out=out)
    assert again["trials"] == 2  # --trials 0: the summary of the study as it is
    with pytest.raises(CxrError, match="holds the trials of study 'sweep'"):
        tune(TrainTarget("phantom", phantom_root, "3class", **FIXED), "lr=1e-4..1e-2:log", trials=0,
             storage=f"journal:{tmp_path / 'study.log'}", out=out, study="other")


def test_a_bad_trial_is_pruned_during_training(phantom_root, tmp_path):
    "A pruner that prunes at the first report: the trial stops after epoch 1 of 3, its folder keeps the history."
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    objective = make_objective(TrainTarget("phantom", phantom_root, "3class", **FIXED),
                               parse_space("epochs=3"), tmp_path, "accuracy", "maximize")
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]
    run = tmp_path / "trial-0000"
    assert len(pd.read_csv(run / "history.csv")) == 1 and not (run / "metrics.json").exists()


def test_unknown_metric_stops_with_the_metrics_there_are(phantom_root, tmp_path):
    with pytest.raises(CxrError, match="valid split has no such value; it has: .*macro_f1"):
        tune(TrainTarget("phantom", phantom_root, "3class", **FIXED), "epochs=1", trials=1, metric="f1",
             storage=f"journal:{tmp_path / 'study.log'}", out=tmp_path / "m", prune=False)


def test_storage_urls(tmp_path):
    assert type(open_storage(f"journal:{tmp_path / 'a' / 's.log'}")).__name__ == "JournalStorage"
    assert type(open_storage(f"sqlite:///{tmp_path / 'b' / 's.db'}")).__name__ == "RDBStorage"
    assert (tmp_path / "b").is_dir()
    with pytest.raises(CxrError, match="give a database URL"): open_storage("study.db")


def worker(root, storage, out, trials):
    "One `python -m cxr_fast tune` worker process."
    cmd = [sys.executable, "-m", "cxr_fast", "tune", "train", "phantom", str(root), "--task", "3class",
           "--space", "lr=1e-4..1e-2:log; epochs=1|2", "--trials", str(trials), "--metric", "accuracy",
           "--storage", storage, "--study", "shared", "--out", str(out), "--prune", "false",
           *[w for k, v in FIXED.items() for w in (f"--{k.replace('_', '-')}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("journal", marks=pytest.mark.slow)])
def test_two_workers_share_one_study(phantom_root, tmp_path, kind):
    "Two processes on one study: each runs its 2 trials, 4 distinct trials in all, none lost, none run twice."
    out = tmp_path / "shared-out"
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    procs = [worker(phantom_root, storage, out, 2) for _ in range(2)]
    logs = []
    try:
        for p in procs: logs.append(p.communicate(timeout=420)[0])
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == 4
    for t, run in zip(trials, run_dirs):
        config = json.loads((run / "config.json").read_text())
        assert config["lr"] == pytest.approx(t.params["lr"]) and config["epochs"] == t.params["epochs"]
        assert len(pd.read_csv(run / "history.csv")) == t.params["epochs"]  # each trial trained once, fully
        assert (run / "metrics.json").is_file()
    assert sum("4 trials" in log or "3 trials" in log for log in logs) >= 1  # the summary counts the whole study


def test_tune_over_a_recipe(split_folders_root, tmp_path):
    "A recipe's trial is its OUT (several run folders); the objective is the best of its runs; --tracker reaches them."
    out = tmp_path / "r18"
    summary = tune(RecipeTarget("resnet18", data=str(split_folders_root), quick=True), "lr=1e-4..1e-3:log", trials=1,
                   metric="accuracy", storage=f"journal:{tmp_path / 'study.log'}", out=out, tracker="csv")
    assert summary["complete"] == 1
    trial = out / "trial-0000"
    runs = sorted(p.parent.name for p in trial.glob("*/metrics.json"))
    assert len(runs) == 3 and all((trial / r / "epochs.csv").is_file() for r in runs)
    accuracies = [json.loads((trial / r / "metrics.json").read_text())["valid"]["accuracy"] for r in runs]
    assert summary["best"]["value"] == pytest.approx(max(accuracies))
    assert all(r in (out / "compare.md").read_text() for r in runs)
    argv = shlex.split((out / "best_command.txt").read_text())
    assert argv[:5] == ["python", "-m", "cxr_fast", "recipe", "resnet18"] and "--lr" in argv and "--quick" in argv
