"""What every tracker logs (final metrics, the flat configuration, figures, each epoch's values) and the `Tracker`
interface the backends (one module each) implement."""
import json
import math
from pathlib import Path

from fastai.callback.core import Callback
from fastai.learner import Recorder

from ..callbacks import epoch_ran

FIGURES = ("*.png",)
RUN_FILES = ("config.json", "metrics.json", "report.md", "history.csv")


def final_metrics(results):
    "{'valid_accuracy': ..., 'test_auc': ...}: the scalar metrics of every split of a train() result."
    out = {}
    for split in ("valid", "test"):
        for key, value in ((results or {}).get(split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{split}_{key}"] = float(value)
    return out


def flat_config(config, max_len=500):
    "A run's configuration as {key: str} (lists and dicts as JSON, cut to `max_len` characters)."
    out = {}
    for key, value in (config or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[key] = text if len(text) <= max_len else text[: max_len - 3] + "..."
    return out


def read_config(run_dir):
    "RUN_DIR/config.json, or {} before train has written it."
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def epochs_done(run_dir):
    "Epochs already in RUN_DIR/history.csv (a resumed run continues the step count after them)."
    path = Path(run_dir) / "history.csv"
    if not path.is_file(): return 0
    return max(0, sum(1 for line in path.read_text().splitlines() if line.strip()) - 1)


def figures(run_dir):
    "The report's figures in RUN_DIR (sorted)."
    return sorted(p for pattern in FIGURES for p in Path(run_dir).glob(pattern))


def epoch_log(learn):
    "{name: float} of the epoch that just ended: train_loss, valid_loss and the metrics."
    rec = learn.recorder
    out = {}
    for name, value in zip(rec.metric_names, rec.log):
        if name in ("epoch", "time"): continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class EpochCallback(Callback):
    "Calls `log(step, values)` after every epoch that ran, the step counting epochs over all stages of a run."
    order = Recorder.order + 2  # after the Recorder has the epoch's values (fastai's TensorBoard/W&B callbacks: +1)

    def __init__(self, log, first_step=0):
        self.log, self.step = log, first_step

    def after_epoch(self):
        if not epoch_ran(self.learn): return
        self.log(self.step, epoch_log(self.learn))
        self.step += 1


class Tracker:
    "One tracker for one run folder: callbacks() for training, finish(results) at the end, close(status) on failure."
    name = None

    def __init__(self, run_dir, tracker_dir=None):
        self.run_dir = Path(run_dir)
        self.tracker_dir = Path(tracker_dir).expanduser() if tracker_dir else self.run_dir.resolve().parent
        self.run_name = self.run_dir.resolve().name
        self.experiment = self.run_dir.resolve().parent.name or "cxr_fast"

    def callbacks(self):
        "fastai callbacks for every stage."
        return []

    def finish(self, results):
        "Final metrics, figures, model dir; then close."

    def close(self, status="FAILED"):
        "Release what the tracker holds (a run that did not finish)."
