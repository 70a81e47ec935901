"""Experiment tracking: `--tracker csv|tensorboard|mlflow|wandb` (several: comma-separated) on train, recipe and tune.

    python -m cxr_fast train phantom data/phantom --task 3class --out runs/r18 --tracker mlflow,tensorboard
    tensorboard --logdir runs/tensorboard            MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/mlruns

Each tracker gets the run's configuration (config.json), every epoch's metrics (all stages, one step count),
the final metrics of every split, the report's figures and the model directory:

| tracker       | through                                   | where (default; --tracker-dir DIR replaces RUN_DIR/..) |
|---------------|-------------------------------------------|--------------------------------------------------------|
| `csv`         | fastai `CSVLogger`                        | RUN_DIR/epochs.csv, RUN_DIR/final_metrics.csv           |
| `tensorboard` | fastai `TensorBoardCallback`              | RUN_DIR/../tensorboard/RUN_NAME (scalars, config text, figures as images, hparams) |
| `mlflow`      | MLflow's tracking API (`MlflowClient`)    | $MLFLOW_TRACKING_URI, else the file store RUN_DIR/../mlruns; experiment $MLFLOW_EXPERIMENT_NAME, else the parent folder's name; figures, report, config and model/ as artifacts |
| `wandb`       | fastai `WandbCallback`                    | RUN_DIR/../wandb, offline unless WANDB_MODE says otherwise (`wandb sync` uploads later); project $WANDB_PROJECT, else the parent folder's name |

None is a dependency of cxr_fast: `pip install 'cxr_fast[track]'` installs tensorboard, mlflow and wandb; a
tracker whose package is missing stops the run before it starts, saying what to install. In a run of several
processes (`distributed.py`) only the main process tracks.

MLflow's file store (a plain folder, safe for several tune workers at once) is in maintenance mode since
MLflow 3.7, which refuses it unless MLFLOW_ALLOW_FILE_STORE=true: cxr_fast sets that variable when it uses the
file store; MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db (or a tracking server) uses a database instead.

Other code adds its own hooks to every `train()` inside a block: `with tracking_context(hooks=[...])`
(`tune` adds its pruning callback that way; `recipe --tracker` sets the trackers of all its runs).
"""
import contextvars
import importlib.util
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger
from fastai.learner import Recorder
from PIL import Image

from ..cli.args import as_list
from .distributed import is_main
from ..core.errors import CxrError
from ..core.jsonio import write_atomic

PACKAGES = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
FIGURES = ("*.png",)
RUN_FILES = ("config.json", "metrics.json", "report.md", "history.csv")
_CONTEXT = contextvars.ContextVar("cxr_fast_tracking", default={"tracker": None, "tracker_dir": None, "hooks": ()})


# ---- options and context ---------------------------------------------------------------------

def parse_trackers(value):
    "--tracker: None, a name, a comma-separated string or a list; each one of csv, tensorboard, mlflow, wandb."
    names = as_list(value, "tracker")
    if any(str(n).lower() in ("none", "false", "") for n in names): return []
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        raise CxrError(f"--tracker {','.join(map(str, unknown))}: unknown; choose from {', '.join(PACKAGES)} "
                       f"(several: comma-separated)")
    for name in names: require(name)
    return list(dict.fromkeys(names))


def require(name):
    "Fail before training when a tracker's package is missing, saying what to install."
    package = PACKAGES[name]
    if package is None: return
    if importlib.util.find_spec(package) is None:
        raise CxrError(f"--tracker {name} needs the {package} package: pip install 'cxr_fast[track]' (or {package})")


@contextmanager
def tracking_context(tracker=None, tracker_dir=None, hooks=()):
    """Inside the block, every `train()` that names no tracker of its own uses `tracker` (and `tracker_dir`), and
    gets `hooks` (objects with callbacks(), finish(results), close(status)) besides its own."""
    outer = _CONTEXT.get()
    inner = {"tracker": outer["tracker"] if tracker is None else parse_trackers(tracker),
             "tracker_dir": tracker_dir or outer["tracker_dir"], "hooks": (*outer["hooks"], *hooks)}
    token = _CONTEXT.set(inner)
    try:
        yield inner
    finally:
        _CONTEXT.reset(token)


def context_tracker():
    "The trackers the enclosing tracking_context sets (None when none does)."
    return _CONTEXT.get()["tracker"]


def run_hooks(run_dir, tracker=None, tracker_dir=None):
    """The hooks of one run: a Tracker per name (`tracker`, else the context's) and the context's other hooks.
    None in a process other than the main one of a distributed run."""
    if not is_main(): return []
    context = _CONTEXT.get()
    names = parse_trackers(tracker) if tracker is not None else (context["tracker"] or [])
    folder = tracker_dir or context["tracker_dir"]
    return [TRACKERS[n](run_dir, folder) for n in names] + list(context["hooks"])


def hook_callbacks(hooks):
    "The fastai callbacks of every hook, for every stage of the run."
    return [cb for h in hooks for cb in h.callbacks()]


def finish_hooks(hooks, results):
    "After a finished run: each hook logs the final metrics and artifacts, then closes."
    for h in hooks: h.finish(results)


def close_hooks(hooks, error):
    "After a run that stopped on `error`: each hook closes (status KILLED for an interrupt or a pruned trial)."
    status = "KILLED" if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrialPruned" else "FAILED"
    for h in hooks:
        try:
            h.close(status)
        except Exception as e:  # closing must not hide the error that stopped the run
            print(f"warning: closing {type(h).__name__} failed: {type(e).__name__}: {e}")


# ---- what is logged --------------------------------------------------------------------------

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


def epoch_ran(learn):
    "False for an epoch fit(start_epoch=...) skipped on resume (the recorder logged nothing for it)."
    return bool(learn.recorder.values) and len(learn.recorder.values[-1]) > 0


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
    order = Recorder.order + 2  # after the recorder has the epoch's values

    def __init__(self, log, first_step=0):
        self.log, self.step = log, first_step

    def after_epoch(self):
        if not epoch_ran(self.learn): return
        self.log(self.step, epoch_log(self.learn))
        self.step += 1


# ---- trackers --------------------------------------------------------------------------------

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


class CsvTracker(Tracker):
    "fastai's CSVLogger into RUN_DIR/epochs.csv (every stage appended, one header), final_metrics.csv at the end."
    name = "csv"

    def callbacks(self):
        run_dir = self.run_dir

        class OneHeaderCSVLogger(CSVLogger):
            "CSVLogger appending every stage to one file, its header written once (a fresh run starts a new file)."
            def before_fit(self):
                path = self.path / self.fname
                if not getattr(self, "started", False) and not read_config(run_dir).get("resume"):
                    path.unlink(missing_ok=True)
                self.started = True
                path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not path.is_file() or path.stat().st_size == 0
                self.file = path.open("a")
                if fresh: self.file.write(",".join(self.recorder.metric_names) + "\n")
                self.old_logger, self.learn.logger = self.logger, self._write_line
        return [OneHeaderCSVLogger(self.run_dir.resolve() / "epochs.csv", append=True)]

    def finish(self, results):
        rows = [{"metric": k, "value": v} for k, v in final_metrics(results).items()]
        write_atomic(self.run_dir / "final_metrics.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))


class TensorBoardTracker(Tracker):
    "fastai's TensorBoardCallback (one step count over all stages); config as text, figures as images, hparams."
    name = "tensorboard"

    @property
    def log_dir(self):
        return self.tracker_dir / "tensorboard" / self.run_name

    def callbacks(self):
        from fastai.callback.tensorboard import TensorBoardCallback  # imports tensorboard, the `track` extra
        steps_before = epochs_done(self.run_dir)

        class StagedTensorBoard(TensorBoardCallback):
            "TensorBoardCallback whose step continues across fits (stages) and resumed runs."
            def __init__(self, log_dir):
                super().__init__(log_dir, trace_model=False, log_preds=False)
                self.offset = None

            @property
            def train_iter(self):
                return self.offset + self.learn.train_iter

            def before_fit(self):
                if self.offset is None: self.offset = steps_before * len(self.learn.dls.train)
                super().before_fit()

            def after_batch(self):  # fastai's also runs after valid batches, reading a train loss that may not exist
                if self.training and hasattr(self.learn, "smooth_loss"): super().after_batch()

            def after_fit(self):
                self.offset += self.learn.train_iter
                super().after_fit()
        return [StagedTensorBoard(str(self.log_dir))]

    def finish(self, results):
        from torch.utils.tensorboard import SummaryWriter  # needs tensorboard, the `track` extra
        config, metrics = read_config(self.run_dir), final_metrics(results)
        writer = SummaryWriter(log_dir=str(self.log_dir))
        try:
            writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")
            writer.add_text("run_dir", str(self.run_dir.resolve()))
            for key, value in metrics.items(): writer.add_scalar(f"final/{key}", value, 0)
            for path in figures(self.run_dir):
                image = np.asarray(Image.open(path).convert("RGB"))
                writer.add_image(f"figures/{path.stem}", image, 0, dataformats="HWC")
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str))
                       for k, v in config.items() if v is not None}
            writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        finally:
            writer.close()


class MlflowTracker(Tracker):
    "MLflow's tracking API: params, per-epoch metrics (step = epoch over all stages), final metrics, artifacts."
    name = "mlflow"

    def __init__(self, run_dir, tracker_dir=None):
        super().__init__(run_dir, tracker_dir)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.tracker_dir / "mlruns").resolve().as_uri()
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.experiment
        self.client, self.run_id = None, None

    def _client(self):
        if self.client is None:
            if self.uri.startswith("file:"): os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient  # the `track` extra, after MLFLOW_ALLOW_FILE_STORE is set
            self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def _experiment_id(self):
        client = self._client()
        for _ in range(5):  # several tune workers may create the experiment at the same moment
            found = client.get_experiment_by_name(self.experiment)
            if found is not None: return found.experiment_id
            try:
                return client.create_experiment(self.experiment)
            except Exception:
                time.sleep(0.2)
        raise CxrError(f"MLflow: cannot create or find experiment {self.experiment!r} at {self.uri}")

    def start(self):
        "The MLflow run of this run folder: the one a resumed run started (RUN_DIR/mlflow_run.json), else a new one."
        if self.run_id is not None: return self.run_id
        from mlflow.entities import Param  # the `track` extra: only an mlflow tracker imports it
        client, marker = self._client(), self.run_dir / "mlflow_run.json"
        saved = json.loads(marker.read_text()) if marker.is_file() else {}
        if saved.get("uri") == self.uri and read_config(self.run_dir).get("resume"):
            self.run_id = saved["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        run = client.create_run(self._experiment_id(), run_name=self.run_name,
                                tags={"cxr_fast.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        write_atomic(marker, lambda p: p.write_text(json.dumps({"uri": self.uri, "run_id": self.run_id})))
        params = [Param(k, v) for k, v in flat_config(read_config(self.run_dir)).items()]
        for i in range(0, len(params), 100): client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def log_epoch(self, step, values):
        from mlflow.entities import Metric  # the `track` extra
        now = int(time.time() * 1000)
        self._client().log_batch(self.start(), metrics=[Metric(k, v, now, step) for k, v in values.items()
                                                        if math.isfinite(v)])

    def callbacks(self):
        tracker = self

        class MlflowEpochs(EpochCallback):
            def before_fit(self):
                tracker.start()
        return [MlflowEpochs(self.log_epoch, epochs_done(self.run_dir))]

    def finish(self, results):
        from mlflow.entities import Metric  # the `track` extra
        client, run_id = self._client(), self.start()
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in final_metrics(results).items()])
        for path in figures(self.run_dir): client.log_artifact(run_id, str(path), "figures")
        for name in RUN_FILES:
            if (self.run_dir / name).is_file(): client.log_artifact(run_id, str(self.run_dir / name))
        if (self.run_dir / "model").is_dir(): client.log_artifacts(run_id, str(self.run_dir / "model"), "model")
        client.set_terminated(run_id, "FINISHED")

    def close(self, status="FAILED"):
        if self.run_id is not None: self._client().set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    "fastai's WandbCallback in a W&B run (offline unless WANDB_MODE says otherwise); figures, summary, model artifact."
    name = "wandb"

    def __init__(self, run_dir, tracker_dir=None):
        super().__init__(run_dir, tracker_dir)
        self.project = os.environ.get("WANDB_PROJECT") or self.experiment
        self.run = None

    def start(self):
        "wandb.init for this run folder (once)."
        if self.run is not None: return self.run
        import wandb  # the `track` extra: only a wandb tracker imports it
        folder = self.tracker_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=self.run_name, dir=str(folder),
                              mode=os.environ.get("WANDB_MODE", "offline"), config=read_config(self.run_dir))
        return self.run

    def callbacks(self):
        from fastai.callback.wandb import WandbCallback  # imports wandb, the `track` extra
        tracker = self

        class StartedWandb(WandbCallback):
            """WandbCallback (per-batch train loss and hyper-parameters, per-epoch metrics) in the tracker's run.
            Its before_fit is fastai's without `learn.gather_args()`, which fails on this Learner's arguments (it
            recurses into objects without __dict__): the configuration is config.json, given to wandb.init."""
            def before_fit(self):
                run = tracker.start()
                if not hasattr(self, "_wandb_step"):  # the first stage; later ones continue the counts
                    self._wandb_step, self._wandb_epoch = run.step - 1, epochs_done(tracker.run_dir)
                self.run = not hasattr(self.learn, "lr_finder")

            def after_epoch(self):
                if epoch_ran(self.learn): super().after_epoch()
        return [StartedWandb(log=None, log_preds=False, log_model=False)]

    def finish(self, results):
        import wandb  # the `track` extra: only a wandb tracker imports it
        run = self.start()
        run.summary.update(final_metrics(results))
        images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in figures(self.run_dir)}
        if images: run.log(images)
        if (self.run_dir / "model").is_dir():
            artifact = wandb.Artifact(f"model-{self.run_name}", type="model")
            artifact.add_dir(str(self.run_dir / "model"))
            run.log_artifact(artifact)
        run.finish()
        self.run = None

    def close(self, status="FAILED"):
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None


TRACKERS = {"csv": CsvTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}
