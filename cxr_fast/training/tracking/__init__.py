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

This module owns the options, the context and the hooks; `base.py` what every tracker logs; each backend is one
module (`csv_tracker.py`, `tensorboard_tracker.py`, `mlflow_tracker.py`, `wandb_tracker.py`), imported only when
a run uses it, so tensorboard, mlflow and wandb are imported only then.

MLflow's file store (a plain folder, safe for several tune workers at once) is in maintenance mode since
MLflow 3.7, which refuses it unless MLFLOW_ALLOW_FILE_STORE=true: cxr_fast sets that variable when it uses the
file store; MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db (or a tracking server) uses a database instead.

Other code adds its own hooks to every `train()` inside a block: `with tracking_context(hooks=[...])`
(`tune` adds its pruning callback that way; `recipe --tracker` sets the trackers of all its runs).
"""
import contextvars
import importlib
import importlib.util
from contextlib import contextmanager

from ...core.args import as_list
from ...core.errors import CxrError
from ...core.scoped import scoped
from ..distributed import is_main

PACKAGES = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
BACKENDS = {  # name -> (module, Tracker class): a backend's module is imported when a run uses it
    "csv": ("cxr_fast.training.tracking.csv_tracker", "CsvTracker"),
    "tensorboard": ("cxr_fast.training.tracking.tensorboard_tracker", "TensorBoardTracker"),
    "mlflow": ("cxr_fast.training.tracking.mlflow_tracker", "MlflowTracker"),
    "wandb": ("cxr_fast.training.tracking.wandb_tracker", "WandbTracker"),
}
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


def tracker_class(name):
    "The Tracker class of backend `name`, its module imported now (and with it the backend's package)."
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


@contextmanager
def tracking_context(tracker=None, tracker_dir=None, hooks=()):
    """Inside the block, every `train()` that names no tracker of its own uses `tracker` (and `tracker_dir`), and
    gets `hooks` (objects with callbacks(), finish(results), close(status)) besides its own."""
    outer = _CONTEXT.get()
    inner = {"tracker": outer["tracker"] if tracker is None else parse_trackers(tracker),
             "tracker_dir": tracker_dir or outer["tracker_dir"], "hooks": (*outer["hooks"], *hooks)}
    with scoped(_CONTEXT, inner):
        yield inner


def context_tracker():
    "The trackers the enclosing tracking_context sets (None when none does)."
    return _CONTEXT.get()["tracker"]


# ---- the hooks of one run --------------------------------------------------------------------

def run_hooks(run_dir, tracker=None, tracker_dir=None):
    """The hooks of one run: a Tracker per name (`tracker`, else the context's) and the context's other hooks.
    None in a process other than the main one of a distributed run."""
    if not is_main(): return []
    context = _CONTEXT.get()
    names = parse_trackers(tracker) if tracker is not None else (context["tracker"] or [])
    folder = tracker_dir or context["tracker_dir"]
    return [tracker_class(n)(run_dir, folder) for n in names] + list(context["hooks"])


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
