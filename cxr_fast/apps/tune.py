"""Hyper-parameter sweeps with Optuna: `python -m cxr_fast tune train ...` or `tune recipe NAME ...`.

    python -m cxr_fast tune train phantom data/phantom --task 3class --pretrained false \\
        --space "lr=1e-4..1e-2:log; epochs=2..6; size=64|128; aug=cxr|cxr-flip|none; arch=resnet18|resnet34" \\
        --metric macro_f1 --trials 20 --out runs/tune
    python -m cxr_fast tune recipe resnet18 --data data/coronahack --space space.yaml --trials 10 --out runs/tune-r18

Every option that is not tune's own is passed to every trial unchanged (`--pretrained false --bs 16` above);
the search space names train's (or the recipe's) parameters:

    inline   NAME=LO..HI          uniform (integers when both ends are integers: epochs=2..6)
             NAME=LO..HI:log      log-uniform (lr=1e-4..1e-2:log); LO..HI:step=S for a stepped range
             NAME=A|B|C           one of a list (numbers become numbers: size=64|128)
             NAME=VALUE           fixed
             entries joined by ';' (a plan has commas: plan=head:2@1e-3|head:1@1e-3,all:2@1e-5:1e-3)
    file     space.yaml / .json:  lr: {low: 1.0e-4, high: 1.0e-2, log: true}
                                  epochs: {low: 2, high: 6}          # integers
                                  aug: [cxr, cxr-flip, none]         # choices
                                  bs: 16                             # fixed

The objective is a metric of the valid split (`--metric`: accuracy, balanced_accuracy, macro_f1, auc, ...; for a
recipe the best of its runs), maximised unless `--direction minimize`. Trials are pruned during training (Optuna's
MedianPruner, `--prune false` turns it off): a fastai callback reports each epoch's matching recorder value
(macro_f1 -> f1_score, accuracy -> accuracy, otherwise valid_loss with its sign turned to the study's direction).

The study lives in `--storage` (default sqlite:///runs/study.db; any SQLAlchemy URL such as
postgresql://user@host/db, or `journal:PATH` for Optuna's journal file), under `--study` (default: the --out
folder's name), so several processes or machines can run `tune` with the same --storage, --study and --out at
once: each runs --trials trials of its own (`--max-trials M` stops every worker once the study has M finished
trials). RDB storages keep a heartbeat: a trial whose worker died is marked failed and run again once.

Every trial is an ordinary run folder OUT/trial-NNNN (a recipe's OUT for a recipe). At the end of each worker,
from everything in the study: OUT/trials.csv (Optuna's table), OUT/compare.md (`compare` over the trial folders),
OUT/history.png and OUT/importance.png (Optuna's plots), OUT/best.json and OUT/best_command.txt (the best
configuration as a ready command line). `--trials 0` only writes these.
"""
import inspect
import json
import math
import random
import shlex
import sys
import time
import warnings
from pathlib import Path

from fastai.callback.core import Callback

from ..core.args import as_bool, as_choice, as_float, as_int, to_argv
from ..data.load import source_option_names
from ..core.errors import CxrError
from ..evaluation.runs import compare, compare_markdown, runs_in
from .recipes import get_recipe, resolve_args, run_recipe
from ..core.jsonio import write_atomic
from ..training.callbacks import RunCheckpoint, epoch_ran
from ..training.tracking import tracking_context
from ..training.tracking.base import epoch_log
from ..training.options import check_options, check_trial_options
from ..training.run import train
from .tune_space import Param, parse_space, suggest

INSTALL_HINT = "tune needs Optuna: pip install 'cxr_fast[tune]'"
DEFAULT_STORAGE = "sqlite:///runs/study.db"
DIRECTIONS = ("maximize", "minimize")
EPOCH_METRIC = {"accuracy": "accuracy", "macro_f1": "f1_score", "exact_match": "accuracy_multi"}  # -> recorder


def optuna_module():
    "optuna, or a one-line error saying how to install it."
    try:
        import optuna  # the `tune` extra: imported when a sweep runs, so `tune --help` works without it
    except ImportError:
        raise CxrError(INSTALL_HINT) from None
    return optuna


# ---- what a trial runs -----------------------------------------------------------------------

class TrainTarget:
    "Trials of `train SOURCE ROOT --task T` with fixed options; a trial's run folder is its out."
    def __init__(self, source, root, task=None, **fixed):
        if source is None or root is None: raise CxrError("tune train needs SOURCE ROOT (and --task), as train does")
        self.source, self.root, self.task = source, root, task
        self.fixed = {k.replace("-", "_"): v for k, v in fixed.items()}

    def check(self, space):
        """Fail before any trial on a parameter train does not have (or one tune sets itself), or a value it refuses,
        in the space or among the options every trial gets."""
        if "out" in space: raise CxrError("--space out: each trial's run folder is chosen by tune (OUT/trial-NNNN)")
        tried = {n: [p.low, p.high] if p.kind in ("int", "float") else p.choices for n, p in space.items()}
        check_trial_options(tried, self.source, source_option_names(self.source))
        check_options(self.fixed, source_option_names(self.source))

    def run(self, params, out):
        return train(self.source, self.root, self.task, out=out, **{**self.fixed, **params})

    def values(self, result, metric):
        "The valid split's value of `metric`, as a list (one run)."
        return [(result.get("valid") or {}).get(metric)], [result]

    def command(self, params, out="runs/best"):
        "`python -m cxr_fast train ...` with these parameters."
        head = ["python", "-m", "cxr_fast", "train", str(self.source), str(self.root)]
        if self.task is not None: head += ["--task", str(self.task)]
        return head + to_argv({**self.fixed, **params, "out": out})


class RecipeTarget:
    "Trials of a recipe with fixed options; a trial's folder is the recipe's out."
    def __init__(self, name, **fixed):
        self.recipe = get_recipe(name)
        self.fixed = {k.replace("-", "_"): v for k, v in fixed.items()}

    def check(self, space):
        if "out" in space: raise CxrError("--space out: each trial's folder is chosen by tune (OUT/trial-NNNN)")
        resolve_args(self.recipe.name, self.recipe.load(), {**self.fixed, **{n: p.example() for n, p in space.items()}})

    def run(self, params, out):
        return run_recipe(self.recipe.name, **{**self.fixed, **params, "out": str(out)})

    def values(self, result, metric):
        "The valid split's `metric` of each of the recipe's runs (the objective is the best of them)."
        runs = [r for r in result.values() if isinstance(r, dict) and "valid" in r]
        return [(r.get("valid") or {}).get(metric) for r in runs], runs

    def command(self, params, out="runs/best"):
        return ["python", "-m", "cxr_fast", "recipe", self.recipe.name] + to_argv({**self.fixed, **params, "out": out})


def objective_value(values, metric, direction):
    "The best finite value of `metric` among a trial's runs, or an error naming the metrics there are."
    finite = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not finite: return None
    return max(finite) if direction == "maximize" else min(finite)


def available_metrics(runs):
    "The scalar metric names of the valid split of these results."
    names = set()
    for r in runs:
        names |= {k for k, v in (r.get("valid") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(names - {"n"})


# ---- pruning ---------------------------------------------------------------------------------

class OptunaPruning(Callback):
    """After every epoch: report the recorder's `monitor` (times `sign`) to the Optuna trial; when the pruner says
    so, raise optuna.TrialPruned (the trial stops, its run folder keeps config.json and history.csv)."""
    order = RunCheckpoint.order + 1  # after the trackers and RunCheckpoint: a pruned epoch is in history.csv

    def __init__(self, trial, monitor, sign, counter):
        self.trial, self.monitor, self.sign, self.counter = trial, monitor, sign, counter

    def after_epoch(self):
        if not epoch_ran(self.learn): return
        values = epoch_log(self.learn)
        value = values.get(self.monitor, values.get(f"{self.monitor}_multi"))  # accuracy: accuracy_multi when multi-label
        if value is None:
            raise CxrError(f"pruning: the recorder has no {self.monitor!r}; it has "
                           f"{', '.join(n for n in self.learn.recorder.metric_names if n not in ('epoch', 'time'))}")
        step = self.counter["step"]
        self.counter["step"] += 1
        if not math.isfinite(value): return
        self.trial.report(self.sign * value, step)
        if self.trial.should_prune():
            raise optuna_module().TrialPruned(f"pruned at epoch {step + 1}: {self.monitor} {value:.4g}")


class PruningHook:
    "A tracking hook giving every train() of one trial (a recipe runs several) the pruning callback, one step count."
    def __init__(self, trial, monitor, sign):
        self.trial, self.monitor, self.sign, self.counter = trial, monitor, sign, {"step": 0}

    def callbacks(self):
        return [OptunaPruning(self.trial, self.monitor, self.sign, self.counter)]

    def finish(self, results):
        "Nothing to write."

    def close(self, status="FAILED"):
        "Nothing to release."


def pruning_monitor(metric, direction, prune_on=None):
    "(recorder column, sign) reported to the pruner: the column matching `metric` (or `prune_on`), signed for `direction`."
    monitor = prune_on or EPOCH_METRIC.get(metric, "valid_loss")
    lower_is_better = monitor.endswith("loss")
    sign = -1.0 if lower_is_better == (direction == "maximize") else 1.0
    return monitor, sign


# ---- storage and study -----------------------------------------------------------------------

def open_storage(url, heartbeat=60):
    """An Optuna storage: 'journal:PATH' (or a path ending .log/.journal) -> JournalStorage over a file; any other
    URL -> RDBStorage (sqlite's folder created, a lock timeout for concurrent workers, a heartbeat whose stale
    trials are failed and retried once)."""
    optuna = optuna_module()
    url = str(url)
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # optuna: the `tune` extra
        path = Path(url.removeprefix("journal:").removeprefix("//")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if "://" not in url:
        raise CxrError(f"--storage {url!r}: give a database URL (sqlite:///runs/study.db, postgresql://...) or journal:PATH")
    engine = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) != ":memory:": path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}
    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    callback_key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning for the heartbeat options
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                  grace_period=3 * heartbeat, **{callback_key: retry_cls(max_retry=1)})
        except Exception as e:  # two workers creating a new database's tables at once ("table ... already exists")
            if attempt == 4 or type(e).__name__ not in ("OperationalError", "IntegrityError"): raise
            time.sleep(0.5 + random.random())


def open_study(storage, name, direction, prune=True, sampler_seed=None):
    "The study `name` in `storage` (created by the first worker; later ones load it); its direction must match."
    optuna = optuna_module()
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != direction:
        raise CxrError(f"study {name!r} exists and is {study.direction.name.lower()}d; use --direction "
                       f"{study.direction.name.lower()} or another --study")
    return study


def claim_out(out, study_name, storage_url):
    "OUT/study.json: the folder belongs to one study (several workers of it may share it)."
    marker = Path(out) / "study.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("study") != study_name:
            raise CxrError(f"{out} holds the trials of study {saved.get('study')!r}; use --study "
                           f"{saved.get('study')} to continue it, or another --out")
        return
    write_atomic(marker, lambda p: p.write_text(json.dumps({"study": study_name, "storage": storage_url}, indent=1)))


# ---- running ---------------------------------------------------------------------------------

class TrialFailed(Exception):
    "A trial stopped by a user-level error (a configuration that does not fit): recorded as FAIL, the sweep goes on."


def make_objective(target, space, out, metric, direction, prune=True, prune_on=None, tracker=None, tracker_dir=None):
    "The Optuna objective: a run folder per trial, the valid `metric` of its result."
    monitor, sign = pruning_monitor(metric, direction, prune_on)

    def objective(trial):
        params = suggest(trial, space)
        run_dir = Path(out) / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("params", params)  # with the fixed ones, which Optuna does not store
        hooks = [PruningHook(trial, monitor, sign)] if prune else []
        try:
            with tracking_context(tracker=tracker, tracker_dir=tracker_dir, hooks=hooks):
                result = target.run(params, run_dir)
        except CxrError as e:
            print(f"trial {trial.number} failed: {e}", file=sys.stderr)
            trial.set_user_attr("error", str(e))
            raise TrialFailed(str(e)) from None
        values, runs = target.values(result, metric)
        value = objective_value(values, metric, direction)
        if value is None:
            raise CxrError(f"--metric {metric}: the valid split has no such value; it has: "
                           f"{', '.join(available_metrics(runs)) or 'nothing (no valid split?)'}")
        return value
    return objective


def tune(target, space, *, trials=10, timeout=None, metric="macro_f1", direction="maximize", storage=DEFAULT_STORAGE,
         study=None, out="runs/tune", prune=True, prune_on=None, max_trials=None, sampler_seed=None, tracker=None,
         tracker_dir=None):
    """Run `trials` Optuna trials of `target` (TrainTarget / RecipeTarget) over `space` in the shared study, then write
    the summary of the whole study into `out`; returns the summary dict (best trial, counts, files)."""
    optuna = optuna_module()
    out = Path(out)
    if not (isinstance(space, dict) and space and all(isinstance(p, Param) for p in space.values())):
        space = parse_space(space)
    target.check(space)
    direction = as_choice(direction, DIRECTIONS, "direction")
    trials = as_int(trials, "trials", min_value=0)
    timeout = None if timeout is None else as_float(timeout, "timeout", min_value=1)
    study_name = str(study or out.resolve().name)
    storage_obj = open_storage(storage)
    the_study = open_study(storage_obj, study_name, direction, as_bool(prune, "prune"), sampler_seed)
    claim_out(out, study_name, str(storage))
    callbacks = []
    if max_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(optuna.study.MaxTrialsCallback(as_int(max_trials, "max-trials", 1), states=states))
    if trials:
        objective = make_objective(target, space, out, metric, direction, as_bool(prune, "prune"), prune_on, tracker,
                                   tracker_dir)
        the_study.optimize(objective, n_trials=trials, timeout=timeout, catch=(TrialFailed,), callbacks=callbacks,
                           gc_after_trial=True)
    return write_summary(the_study, out, target, metric)


# ---- the summary -----------------------------------------------------------------------------

def trial_folders(study):
    "The run folders of the study's trials (a recipe's trial: the run folders inside it; evaluation.runs_in)."
    return [r for t in study.trials if t.user_attrs.get("run_dir") for r in runs_in(t.user_attrs["run_dir"])]


def write_compare(folders, out):
    "OUT/compare.md: `compare` over the trials' run folders, each named by its path under OUT."
    df = compare(*folders)
    df["run"] = [str(f.relative_to(out)) if f.is_relative_to(out) else str(f) for f in folders]
    write_atomic(out / "compare.md", lambda p: p.write_text(compare_markdown(df) + "\n"))
    return out / "compare.md"


def write_summary(study, out, target, metric):
    "trials.csv, compare.md, history.png, importance.png, best.json, best_command.txt in `out`; the summary dict."
    optuna = optuna_module()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    states = [t.state.name for t in study.trials]
    summary = {"study": study.study_name, "direction": study.direction.name.lower(), "metric": metric,
               "trials": len(states), **{s.lower(): states.count(s) for s in sorted(set(states))}, "files": {}, "notes": []}
    if study.trials:
        df = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
        write_atomic(out / "trials.csv", lambda p: df.to_csv(p, index=False))
        summary["files"]["trials"] = str(out / "trials.csv")
    folders = trial_folders(study)
    if folders: summary["files"]["compare"] = str(write_compare(folders, out))
    for name, plot in (("history", "plot_optimization_history"), ("importance", "plot_param_importances")):
        try:
            save_plot(getattr(optuna.visualization.matplotlib, plot), study, out / f"{name}.png")
            summary["files"][name] = str(out / f"{name}.png")
        except Exception as e:  # importance needs >= 2 finished trials and a parameter that varies
            summary["notes"].append(f"no {name}.png: {type(e).__name__}: {e}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        command = target.command(best.user_attrs.get("params", best.params))
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "run_dir": best.user_attrs.get("run_dir"), "command": shlex.join(command)}
        write_atomic(out / "best_command.txt", lambda p: p.write_text(shlex.join(command) + "\n"))
        summary["files"]["best_command"] = str(out / "best_command.txt")
    write_atomic(out / "best.json", lambda p: p.write_text(json.dumps(summary, indent=1, default=str)))
    return summary


def save_plot(plot, study, path):
    "An Optuna matplotlib plot as a PNG (atomic), its figure closed."
    import matplotlib  # pyplot picks a backend when imported: Agg first, and only when a summary draws a plot
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for its matplotlib plots
        ax = plot(study)
    fig = getattr(ax, "figure", None) or ax.flat[0].figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    try:
        write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=90))
    finally:
        plt.close(fig)
