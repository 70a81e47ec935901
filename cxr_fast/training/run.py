"""One training run: `train()` from its options to a run folder, and the stages of its freeze plan.

    python -m cxr_fast train phantom data/phantom --task 3class --arch resnet18 --out runs/r18 \\
        --plan "head:2@1e-3,layers=conv1+layer1+layer3:2@1e-3,all:2@1e-5:1e-3"

train's options are declared once in options.py (its signature and help come from there); the learner is built in
learner.py, the run folder written by run_folder.py; the freeze-plan language is in plans.py, checkpoints and
`--resume` in checkpoints.py, the callbacks of a stage in callbacks.py.

RUN_DIR gets config.json, history.csv (one row per epoch, all stages, `stage` and `trains` columns),
table.csv/.json, checkpoints/{last,best}.pth, metrics.json/report.md/plots (evaluation/runs.py) and model/.
"""
import contextlib
from pathlib import Path

import torch

from . import distributed, tracking
from ..core.args import as_choice
from ..core.errors import CxrError
from ..core.lock import claim_folder
from ..core.machine import set_threads
from ..core.version import __version__
from ..data.labels import is_multilabel
from ..data.load import source_option_names, typed_source_options
from ..data.sources import SOURCES
from ..data.table import write_table
from ..evaluation import runs as evaluation  # evaluation.evaluate_run, looked up at call time (tests replace it)
from ..evaluation.card import describe_provenance
from ..models.folder import save_model_dir
from ..models.weights import ensure_pretrained_available
from .callbacks import BestModel, EarlyStop, ResumeRecorder, RunCheckpoint
from .checkpoints import load_last, next_position, resume_hook
from .features import fit_head_on_features, uses_frozen_features
from .imbalance import class_weight_values
from .learner import build_learner, metric_names
from .members import MEMBERS_DIR, check_members, fit_members
from .options import OPTIONS, close_options, options_help, resolve_config, train_signature, unknown_option
from .plans import check_plan, fit_stage, lr_uses_auto
from .precision import evaluating_as_predict
from .run_folder import (dropped_line, get_table, model_meta, prepare_run_dir, run_fast_audit, table_sha1,
                         write_config)


def run_plan(learn, plan, run_dir, config, ckpt=None, cbs=None):
    "Fit every stage of the plan from where `ckpt` left off (checkpoints/best.pth kept when config['save_best'])."
    suggestion = config.get("lr_suggestion")
    history = list(ckpt["history"]) if ckpt else []
    main = distributed.is_main()  # only the main process of a distributed run writes checkpoints and history
    best_file = Path(run_dir) / "checkpoints" / "best.pth"
    best = BestModel(config["monitor"], best_file) if config["save_best"] and main else None
    if best is not None and ckpt is not None and ckpt["best"] is not None: best.best = ckpt["best"]
    first_stage, first_epoch = next_position(ckpt)
    for i, stage in enumerate(plan):
        if i < first_stage: continue
        resumed = ckpt is not None and i == first_stage
        mid_stage = resumed and first_epoch > 0
        early = (EarlyStop(config["monitor"], config["patience"], ckpt["early"] if mid_stage else None)
                 if config["patience"] else None)
        checkpoint = RunCheckpoint(run_dir, i, stage, history, best, early)
        recorder = [ResumeRecorder(ckpt["smooth_loss"])] if mid_stage else []
        checkpoints = [checkpoint] if main else []
        stage_cbs = [c for c in (best, early) if c is not None] + list(cbs or []) + checkpoints + recorder
        on_features = uses_frozen_features(stage, config)  # its optimiser is not the learner's: not restored
        fit = fit_head_on_features if on_features else fit_stage
        fit(learn, stage, suggestion, stage_cbs, start_epoch=first_epoch if mid_stage else 0,
            before_fit=resume_hook(learn, ckpt, mid_stage and not on_features) if resumed else None)
    if ckpt is not None and first_stage >= len(plan): learn.model.load_state_dict(ckpt["model"])


def find_lr(learn, config, saved):
    "lr_find's valley when asked for (or when a stage's lr is 'auto'); a resumed run reuses the saved one."
    if saved is not None and saved.get("lr_suggestion") is not None: return saved["lr_suggestion"]
    if not (config["lr_find"] or any(lr_uses_auto(s["lr"]) for s in config["plan"])): return None
    return float(learn.lr_find(show_plot=False).valley)


def split_keywords(keywords, source, table):
    """train()'s keywords as (every option, the default where not given; the source's options). A keyword that is
    neither an option nor an option of the source(s) is a one-line error naming the close matches."""
    keywords = {k.replace("-", "_"): v for k, v in keywords.items()}
    options = {n: keywords.pop(n, o.default) for n, o in OPTIONS.items() if not o.positional}
    if table is not None:
        if keywords and not close_options(next(iter(keywords))):
            raise CxrError("give either a table or SOURCE ROOT (with source options), not both")
        accepted = []
    elif all(s.strip() in SOURCES or s.strip() == "table" for s in str(source).split("+")):
        accepted = source_option_names(source)
    else: return options, keywords  # an unknown source: load_table names it
    for name in keywords:
        if name not in accepted: raise unknown_option(name, accepted)
    return options, keywords


def train(source=None, root=None, task=None, *, table=None, out=None, cbs=None, **keywords):
    """Train `arch` on a dataset (SOURCE ROOT --task, or a ready `table`), evaluate it, write RUN_DIR `out`.

    Returns evaluation.evaluate_run's dict ({"valid": {...}, "test": {...}, "thresholds": {...}}) plus "run_dir".
    The keywords are the options of options.py (this signature and the Args below are generated from them) and
    the source's own; a wrong value or an unknown keyword is a one-line CxrError.

    Args:
      table: a canonical table instead of SOURCE ROOT (Python only)
      out: the run folder (default: runs/ARCH-TASK)
      cbs: extra fastai callbacks for every stage (Python only)
      source_options: the source's own options (e.g. balance for coronahack), as for the `table` command
    """
    given, source_keywords = split_keywords(keywords, source, table)
    if table is not None and (source is not None or root is not None):
        raise CxrError("give either a table or SOURCE ROOT (with source options), not both")
    if table is not None: source, task = table.attrs.get("source"), table.attrs.get("task") or task
    given = {"source": source, "root": root, "task": task, **given}
    given["source_options"] = typed_source_options(source, source_keywords)  # coerced once, by the loader's defaults
    config = resolve_config(given)
    if config["tracker"] is None: config["tracker"] = tracking.context_tracker()
    config["processes"] = distributed.setup()
    check_members(config)
    set_threads()  # torch threads capped at this machine's usable cores (machine.py)
    if config["pretrained"]: ensure_pretrained_available(config["arch"])
    run_dir = Path(out or f"runs/{config['arch']}-{config['task'] or 'table'}").expanduser()
    # the main process claims the folder before it looks at it, until the run ends: a second training into the
    # same --out (started at the same moment, or while this one runs) is refused in one line
    with claim_folder(run_dir, "training") if distributed.is_main() else contextlib.nullcontext():
        return train_into(run_dir, config, table, cbs)


def train_into(run_dir, config, table, cbs):
    "train()'s run in RUN_DIR (claimed by the caller): the table, the learner, the plan, the evaluation."
    saved = prepare_run_dir(run_dir, config)
    distributed.barrier()  # every process has checked the run folder before the main one writes to it
    with distributed.main_process_first():  # the main process builds the table (and fills caches) first
        table = get_table(config, table, config["source_options"])
    as_choice(config["monitor"], metric_names(is_multilabel(table)), "monitor")
    config["table_sha1"] = table_sha1(table)
    if saved is not None and saved.get("table_sha1") not in (None, config["table_sha1"]):
        raise CxrError(f"cannot resume {run_dir}: the data (paths, splits or labels) differ from the run's table.csv")
    config["class_weight_values"] = class_weight_values(table, config["class_weights"])
    config["cxr_fast_version"] = __version__
    if distributed.is_main(): write_table(table, run_dir / "table.csv")
    if distributed.is_main() and (line := dropped_line(table, run_dir)): print(line)
    if distributed.is_main() and config["audit"]: run_fast_audit(table, run_dir)
    learn = build_learner(config, table, run_dir)
    check_plan(learn, config["plan"])
    config["lr_suggestion"] = distributed.broadcast_object(find_lr(learn, config, saved))
    config["start_weights"] = learn.start_weights
    print(f"starting weights: {describe_provenance(learn.start_weights)}")
    if distributed.is_main(): write_config(config, run_dir)
    device = getattr(learn.dls, "device", None) or "cpu"
    ckpt = load_last(run_dir / "checkpoints" / "last.pth", device) if config["resume"] else None
    if ckpt is not None: print(f"resuming {run_dir} after stage {ckpt['stage'] + 1}, epoch {ckpt['epoch'] + 1}")
    hooks = tracking.run_hooks(run_dir, config["tracker"], config["tracker_dir"])  # none in non-main processes
    cbs = [*distributed.trainer_callbacks(config["sync_bn"]), *(cbs or []), *tracking.hook_callbacks(hooks)]
    try:
        if config["members"] > 1: fit_members(learn, table, run_dir, config, cbs, run_plan)
        else: run_plan(learn, config["plan"], run_dir, config, ckpt, cbs)
        if not distributed.is_main(): return {"run_dir": str(run_dir), "rank": distributed.rank()}
        with distributed.main_process_alone():  # the other processes have ended: evaluation gathers nothing
            results = finish_run(learn, table, run_dir, config)
    except BaseException as e:
        tracking.close_hooks(hooks, e)
        if isinstance(e, KeyboardInterrupt):
            where = run_dir / (MEMBERS_DIR if config["members"] > 1 else "checkpoints/last.pth")
            print(f"interrupted: continue with --resume true (from {where})")
        raise
    tracking.finish_hooks(hooks, results)
    return results


train.__signature__ = train_signature()
train.__doc__ = train.__doc__.rstrip() + "\n" + options_help() + "\n"  # every option's help (the command's too)


def finish_run(learn, table, run_dir, config):
    "Load the best weights (if kept), evaluate (evaluation.evaluate_run), write the model dir; the metrics dict."
    best_file = run_dir / "checkpoints" / "best.pth"
    if config["save_best"] and best_file.is_file():
        learn.model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    with evaluating_as_predict(learn):
        results = evaluation.evaluate_run(learn, table, run_dir, config=config) or {}
    meta = model_meta(config, table, learn, results)
    save_model_dir(learn.model, run_dir / "model", meta, learn=learn if config["export_pkl"] else None)
    return {**results, "run_dir": str(run_dir)}
