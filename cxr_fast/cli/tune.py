"""`tune`: an Optuna sweep over train or a recipe."""
import inspect
import json

from ..apps import tune as tune_module
from ..apps.tune import DEFAULT_STORAGE, RecipeTarget, TrainTarget, tune
from ..core.errors import CxrError


def format_study(summary):
    "A study's summary (tune's return value) in a few lines for the terminal."
    counts = ", ".join(f"{summary[k]} {k}" for k in ("complete", "pruned", "fail", "running") if summary.get(k))
    lines = [f"study {summary['study']}: {summary['trials']} trials ({counts or 'none'})"]
    if "best" in summary:
        b = summary["best"]
        lines += [f"best: trial {b['number']} {summary['metric']} {b['value']:.4g} {json.dumps(b['params'], default=str)}",
                  f"      {b['run_dir']}", f"run it again: {b['command']}"]
    lines += [f"{k}: {v}" for k, v in summary["files"].items()] + summary["notes"]
    return "\n".join(lines)


def tune_command(target=None, *args, space=None, trials=10, timeout=None, metric="macro_f1", direction="maximize",
                 storage=DEFAULT_STORAGE, study=None, out="runs/tune", prune=True, prune_on=None, max_trials=None,
                 sampler_seed=None, tracker=None, tracker_dir=None, **fixed):
    """Optuna sweep over `train` or a recipe; every trial a run folder, the study in a shared storage.

    python -m cxr_fast tune train SOURCE ROOT --task TASK --space SPACE [--trials N] [train options...]
    python -m cxr_fast tune recipe NAME --space SPACE [--trials N] [recipe options...]

    Args:
      target: train or recipe
      args: SOURCE ROOT for train (or --task TASK), NAME for a recipe
      space: 'lr=1e-4..1e-2:log; epochs=1..5; aug=cxr|none; arch=resnet18|resnet34' or a .yaml/.json file
      trials: trials this process runs (0: only write the summary of the study)
      timeout: stop starting trials after this many seconds
      metric: the valid split's metric to optimise (accuracy, balanced_accuracy, macro_f1, auc, ...)
      direction: maximize or minimize
      storage: Optuna storage URL (sqlite:///runs/study.db, postgresql://..., journal:runs/study.log)
      study: the study's name (default: the --out folder's name); workers sharing it share the trials
      out: the folder of the trial run folders and the summary
      prune: stop unpromising trials early (MedianPruner over each epoch's value)
      prune_on: the recorder column reported to the pruner (default: the one matching --metric, else valid_loss)
      max_trials: stop every worker once the study has this many finished (complete or pruned) trials
      sampler_seed: seed of the TPE sampler (leave unset when several workers share a study)
      tracker, tracker_dir: --tracker csv|tensorboard|mlflow|wandb for every trial (see `train --help`)
      fixed: every other option goes to each trial unchanged (e.g. --pretrained false --bs 16)
    """
    fixed = {k.replace("-", "_"): v for k, v in fixed.items()}
    if "help" in fixed or target is None:
        print(inspect.cleandoc(tune_module.__doc__) + "\n\n" + inspect.cleandoc(tune_command.__doc__))
        return 0
    if target not in ("train", "recipe"):
        raise CxrError(f"tune what? `tune train SOURCE ROOT ...` or `tune recipe NAME ...`, not {target!r}")
    if target == "train":
        if len(args) > 3: raise CxrError(f"tune train takes SOURCE ROOT [TASK], got {' '.join(map(str, args))}")
        positional = dict(zip(("source", "root", "task"), args))
        if "task" in fixed and "task" in positional: raise CxrError("give the task once")
        chosen = TrainTarget(positional.get("source"), positional.get("root"),
                             positional.get("task", fixed.pop("task", None)), **fixed)
    else:
        if len(args) != 1: raise CxrError("tune recipe takes one recipe NAME (python -m cxr_fast recipe --list)")
        chosen = RecipeTarget(args[0], **fixed)
    summary = tune(chosen, space, trials=trials, timeout=timeout, metric=metric, direction=direction, storage=storage,
                   study=study, out=out, prune=prune, prune_on=prune_on, max_trials=max_trials,
                   sampler_seed=sampler_seed, tracker=tracker, tracker_dir=tracker_dir)
    print(format_study(summary))
    return 0
