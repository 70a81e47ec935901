"""Training: the learner builder, freeze plans, callbacks, the run folder and `--resume`.

    python -m cxr_fast train phantom data/phantom --task 3class --arch resnet18 --out runs/r18 \\
        --plan "head:2@1e-3,layers=conv1+layer1+layer3:2@1e-3,all:2@1e-5:1e-3"

A plan is a list of stages; each stage sets what trains, then runs one `fit_one_cycle`:

    WHAT:EPOCHS[@LR]   stages joined by ','  (Python: a list of {"train": WHAT, "epochs": E, "lr": LR,
                                              optional "pct_start", "div"})
    WHAT  head              only the head trains (feature extraction; fastai `freeze()`)
          all               everything trains (fastai `unfreeze()`)
          freeze_to=N       the last N layer groups train (fastai `freeze_to(-N)`)
          layers=A+B+C      the named body layers and the head train (`conv1+layer1+layer3`, VGG `features.10`)
    LR    1e-3              one rate for every layer group (the global --lr when left out)
          1e-5:1e-3         slice(1e-5, 1e-3): discriminative rates spread across the layer groups
          :1e-3             slice(1e-3): 1e-3 for the head group, 1e-4 for the body groups
          auto, auto/10     lr_find's valley suggestion (divided by 10); usable for lo and hi as well

"Frozen" follows fastai's default `train_bn=True`: BatchNorm weights and biases of frozen layers keep
training (what `fine_tune` does); `train_bn=False` freezes them too. Without --plan, a pretrained body
(ImageNet or --weights) gets fastai's `fine_tune(epochs, lr, freeze_epochs)` and a body trained from
scratch one `fit_one_cycle(epochs, lr)` of everything.

RUN_DIR gets config.json, history.csv (one row per epoch, all stages, `stage` and `trains` columns),
table.csv/.json, checkpoints/{last,best}.pth, metrics.json/report.md/plots (evaluation.py) and model/.
"""
import hashlib
import inspect
import json
import random
import re
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from fastai.callback.training import GradientClip
from fastai.learner import Learner
from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
from fastai.optimizer import SGD, Adam
from fastai.torch_core import TensorMultiCategory, set_seed
from fastai.vision.all import imagenet_stats
from fastcore.foundation import L
from fastcore.meta import delegates

from .args import as_bool, as_choice, as_float, as_int, as_list
from .errors import CxrError
from .losses import LOSSES, inverse_frequency_weights, make_loss, resolve_loss_name
from .models import (build_model, check_arch, default_head, ensure_pretrained_available, load_body_weights,
                     named_layer, splitter_for)
from .table import classes_of, is_multilabel, label_strings, subsample_class, summarize, write_atomic, write_table
from .version import __version__

OPTIMIZERS = {  # name -> fastai optimizer; weight decay default when --wd is not given
    "adamw": (Adam, 0.01),                                # fastai's default: Adam with decoupled weight decay
    "adam": (partial(Adam, decouple_wd=False), 0.0),     # Adam, weight decay as L2 added to the gradient
    "sgd": (partial(SGD, mom=0.9), 0.0),                  # SGD with momentum 0.9
}
STAGE_DEFAULTS = {"pct_start": 0.25, "div": 25.0}  # fit_one_cycle's
PLAN_HELP = ("a plan is WHAT:EPOCHS[@LR] stages joined by ',' (WHAT: head, all, freeze_to=N or layers=NAME+NAME; "
             "LR: 1e-3, lo:hi, :hi or auto), e.g. head:2@1e-3,all:3@1e-5:1e-3")
RESUME_FREE = ("resume", "overwrite")  # config keys a resumed run may change
DERIVED = ("lr_suggestion", "table_sha1", "cxr_fast_version", "class_weight_values")  # not compared on resume


# ---- learning rates and plans ----------------------------------------------------------------

def _lr_token(token):
    "One number of a learning-rate spec: a positive float, 'auto' or 'auto/K'; returned canonical."
    token = token.strip()
    if re.fullmatch(r"auto(/[0-9.eE+-]+)?", token):
        if "/" in token and not float(token[5:]) > 0: raise ValueError
        return token
    value = float(token)
    if not value > 0: raise ValueError
    return repr(value)


def parse_lr(value, where="lr"):
    """A learning rate: a number (every layer group), 'lo:hi' = slice(lo, hi), ':hi' = slice(hi), or with
    'auto'/'auto/K' (lr_find's valley, divided by K) in place of a number. Returns a float or a canonical string."""
    if isinstance(value, slice): value = f"{'' if value.start is None else value.start}:{value.stop}"
    if isinstance(value, (list, tuple)) and len(value) == 2: value = f"{value[0]}:{value[1]}"
    if isinstance(value, bool): value = None
    parts = str(value).strip().split(":")
    try:
        if len(parts) > 2 or parts[-1] == "": raise ValueError
        tokens = ["" if (i == 0 and len(parts) == 2 and p.strip() == "") else _lr_token(p)
                  for i, p in enumerate(parts)]
    except ValueError:
        raise CxrError(f"--{where}: bad learning rate {value!r}; use 1e-3, lo:hi (1e-5:1e-3), :hi or auto") from None
    if len(tokens) == 2 and "auto" not in "".join(tokens) and tokens[0] and float(tokens[0]) > float(tokens[1]):
        raise CxrError(f"--{where}: {value!r} has lo > hi; write lo:hi")
    if len(tokens) == 1 and "auto" not in tokens[0]: return float(tokens[0])
    return ":".join(tokens)


def lr_uses_auto(lr):
    "True when a parsed learning rate needs lr_find's suggestion."
    return isinstance(lr, str) and "auto" in lr


def to_fastai_lr(lr, suggestion=None):
    "A parsed learning rate as fastai takes it: float, slice(hi) or slice(lo, hi)."
    if isinstance(lr, float): return lr

    def number(token):
        if not token.startswith("auto"): return float(token)
        if suggestion is None: raise CxrError("learning rate 'auto' needs lr_find's suggestion; pass --lr-find true")
        return suggestion / (float(token[5:]) if "/" in token else 1.0)
    if ":" not in lr: return number(lr)
    lo, hi = lr.split(":")
    return slice(number(hi)) if lo == "" else slice(number(lo), number(hi))


def parse_what(what, where):
    "A stage's WHAT in canonical form: head, all, freeze_to=N, layers=A+B."
    m = re.fullmatch(r"\s*(head|all|freeze_to|layers)\s*(?:[=:]\s*(.+?))?\s*", str(what))
    if not m: raise CxrError(f"--plan stage {where!r}: unknown WHAT {what!r}; {PLAN_HELP}")
    kind, arg = m.groups()
    if kind in ("head", "all"):
        if arg: raise CxrError(f"--plan stage {where!r}: {kind} takes no argument; {PLAN_HELP}")
        return kind
    if not arg: raise CxrError(f"--plan stage {where!r}: {kind} needs an argument (freeze_to=2, layers=conv1+layer1)")
    if kind == "freeze_to":
        if not arg.isdigit() or int(arg) < 1:
            raise CxrError(f"--plan stage {where!r}: freeze_to needs a group count >= 1")
        return f"freeze_to={int(arg)}"
    names = [n for n in re.split(r"[+,\s]+", arg) if n]
    return "layers=" + "+".join(names)


def parse_stage(item, default_lr):
    "One stage from 'WHAT:EPOCHS[@LR]' or a dict {train, epochs, lr, pct_start, div}, in canonical form."
    if not isinstance(item, dict):
        text = str(item).strip()
        body, _, lr = text.partition("@")
        what, sep, epochs = body.rpartition(":")
        if not sep or not what.strip(): raise CxrError(f"--plan stage {text!r}: {PLAN_HELP}")
        item, where = {"train": what, "epochs": epochs, "lr": lr if lr.strip() else default_lr}, text
    else:
        where = json.dumps(item, default=str)
        unknown = set(item) - {"train", "epochs", "lr", *STAGE_DEFAULTS}
        if unknown or "train" not in item or "epochs" not in item:
            raise CxrError(f"--plan stage {where}: a stage dict has keys train, epochs and optionally "
                           f"lr, pct_start, div")
    try:
        epochs = as_int(item["epochs"], "plan epochs", min_value=1)
    except CxrError:
        raise CxrError(f"--plan stage {where!r}: EPOCHS must be an integer >= 1; {PLAN_HELP}") from None
    stage = {"train": parse_what(item["train"], where), "epochs": epochs,
             "lr": parse_lr(item.get("lr", default_lr), "plan lr")}
    for key, default in STAGE_DEFAULTS.items():
        stage[key] = as_float(item.get(key, default), f"plan {key}", min_value=0)
    return stage


def parse_plan(plan, default_lr):
    "A plan (string, list of strings/dicts, or None) as a list of canonical stage dicts (None when not given)."
    if plan is None or (isinstance(plan, str) and not plan.strip()): return None
    if isinstance(plan, dict): plan = [plan]
    items = list(plan) if isinstance(plan, (list, tuple)) else [s for s in str(plan).split(",")]
    if any(isinstance(i, str) and not i.strip() for i in items):
        raise CxrError(f"--plan has an empty stage; {PLAN_HELP}")
    if not items: raise CxrError(f"--plan is empty; {PLAN_HELP}")
    return [parse_stage(i, default_lr) for i in items]


def fine_tune_plan(epochs, lr, freeze_epochs):
    "fastai's `fine_tune(epochs, lr, freeze_epochs)` as a plan: head at slice(lr), then all at slice(lr/200, lr/2)."
    half = "auto/2" if lr == "auto" else repr(lr / 2)
    low = "auto/200" if lr == "auto" else repr(lr / 200)
    head = {"train": "head", "epochs": freeze_epochs, "lr": f":{lr}", "pct_start": 0.99, "div": 25.0}
    tail = {"train": "all", "epochs": epochs, "lr": f"{low}:{half}", "pct_start": 0.3, "div": 5.0}
    return ([head] if freeze_epochs > 0 else []) + [tail]


def default_plan(epochs, lr, freeze_epochs, frozen):
    "fine_tune for a pretrained body (`frozen`), else one fit_one_cycle of everything."
    if frozen: return fine_tune_plan(epochs, lr, freeze_epochs)
    return [{"train": "all", "epochs": epochs, "lr": lr, **STAGE_DEFAULTS}]


# ---- freezing --------------------------------------------------------------------------------

def freeze_named_layers(learn, names):
    "Train the named body layers and the head; every other body parameter frozen (BatchNorm per train_bn)."
    learn.unfreeze()
    keep = {id(p) for name in names for p in named_layer(learn.model, name).parameters()}
    for p in learn.model[0].parameters():
        if id(p) not in keep: p.requires_grad_(bool(learn.opt.state[p].get("force_train", False)))


def apply_stage(learn, stage):
    "Set what trains for a stage (fastai freeze / freeze_to / unfreeze; named layers by hand)."
    what = stage["train"]
    n_groups = len(learn.opt.param_lists) if learn.opt else len(learn.splitter(learn.model))
    if what == "head": learn.freeze()
    elif what == "all": learn.unfreeze()
    elif what.startswith("freeze_to="):
        n = int(what.split("=")[1])
        if n > n_groups:
            raise CxrError(f"--plan {what}: this model has {n_groups} layer groups; use freeze_to=1..{n_groups}")
        learn.freeze_to(-n)
    else:
        freeze_named_layers(learn, what.split("=", 1)[1].split("+"))
    for p in learn.model.parameters():  # a stale zero gradient would let weight decay move a frozen weight
        if not p.requires_grad: p.grad = None


def check_plan(learn, plan):
    "Fail before training on a stage that does not fit the model (layer names, group counts)."
    n_groups = len(learn.splitter(learn.model))
    for stage in plan:
        what = stage["train"]
        if what.startswith("layers="):
            for name in what.split("=", 1)[1].split("+"): named_layer(learn.model, name)
        if what.startswith("freeze_to=") and int(what.split("=")[1]) > n_groups:
            raise CxrError(f"--plan {what}: this model has {n_groups} layer groups; use freeze_to=1..{n_groups}")


def fit_stage(learn, stage, suggestion=None, cbs=None, start_epoch=0, before_fit=None):
    "Apply a stage's freezing, then one fit_one_cycle (from `start_epoch` when resuming)."
    apply_stage(learn, stage)
    if before_fit is not None: before_fit()
    learn.fit_one_cycle(stage["epochs"], to_fastai_lr(stage["lr"], suggestion), pct_start=stage["pct_start"],
                        div=stage["div"], cbs=cbs, start_epoch=start_epoch)


# ---- the learner -----------------------------------------------------------------------------

def default_metrics(multilabel):
    "accuracy and macro F1 (fastai's), for the task kind."
    if multilabel: return [accuracy_multi, F1ScoreMulti(average="macro")]
    return [accuracy, F1Score(average="macro")]


def metric_names(multilabel):
    "What `--monitor` may name for a task kind (the recorder's column names)."
    return ["valid_loss", "train_loss", "accuracy_multi" if multilabel else "accuracy", "f1_score"]


@delegates(Learner.__init__)
def cxr_learner(dls, arch="resnet18", head=None, pretrained=True, weights=None, loss_func=None, metrics=None,
                **kwargs):
    """A fastai Learner for `arch` (models.build_model + splitter_for): body frozen when it starts from
    ImageNet (`pretrained`) or from `weights` (a weights file, or a cxr_fast model/run dir to transfer from)."""
    multilabel = (is_multilabel(dls.table) if hasattr(dls, "table")
                  else isinstance(dls.train_ds[0][1], TensorMultiCategory))
    model = build_model(arch, dls.c, head or default_head(), pretrained=bool(pretrained and not weights))
    if weights: load_body_weights(model, arch, weights)
    learn = Learner(dls, model, loss_func=loss_func or make_loss("auto", multilabel),
                    metrics=default_metrics(multilabel) if metrics is None else metrics,
                    splitter=splitter_for(arch), **kwargs)
    if pretrained or weights: learn.freeze()
    return learn


# ---- data: imbalance -------------------------------------------------------------------------

def subsample_majority_train(table, fraction, seed=42):
    "Keep `fraction` of the majority class's train patients (table.subsample_class); valid and test untouched."
    table = table.reset_index(drop=True)
    train = table[table["split"] == "train"]
    majority = label_strings(train).value_counts().idxmax()
    kept = subsample_class(train, majority, fraction, seed)
    out = table[(table["split"] != "train") | table.index.isin(kept.index)].reset_index(drop=True)
    out.attrs = {**table.attrs, "subsampled": {"class": majority, "fraction": fraction}}
    return out


def sampling_weights(table):
    """Oversampling weights, one per train row (in table order, as `blocks.get_dls(weights=)` takes them),
    inverse to the frequency of the row's class in train (multi-label: of its label combination)."""
    labels = label_strings(table[table["split"] == "train"])
    return (1.0 / labels.map(labels.value_counts()).astype(float)).to_numpy()


def class_weight_values(table, class_weights):
    "Per-class loss weights in vocabulary order: 'auto' (inverse train frequency, mean 1), a list or {class: w}."
    if class_weights is None: return None
    classes = classes_of(table)
    if class_weights == "auto":
        if is_multilabel(table): raise CxrError("--class-weights applies to single-label tasks only")
        counts = table.loc[table["split"] == "train", "label"].value_counts().reindex(classes, fill_value=0)
        return [round(float(w), 6) for w in inverse_frequency_weights(counts.tolist())]
    if isinstance(class_weights, dict):
        unknown = set(class_weights) - set(classes)
        if unknown: raise CxrError(f"--class-weights names {sorted(unknown)}, not among the classes {classes}")
        return [float(class_weights.get(c, 1.0)) for c in classes]
    values = as_list(class_weights, "class-weights", float)
    if len(values) != len(classes):
        raise CxrError(f"--class-weights needs {len(classes)} numbers (for {', '.join(classes)}) or 'auto'")
    return values


def table_sha1(table):
    "A digest of what a run trains and evaluates on (paths, splits, labels), to refuse resuming on other data."
    cols = ["path", "split", *(classes_of(table) if is_multilabel(table) else ["label"])]
    return hashlib.sha1(table[cols].to_csv(index=False).encode()).hexdigest()


# ---- callbacks and checkpoints ---------------------------------------------------------------

def epoch_was_run(learn):
    "False for an epoch that fit(start_epoch=...) skipped on resume (the recorder logged nothing for it)."
    return bool(learn.recorder.values) and len(learn.recorder.values[-1]) > 0


class BestModel(SaveModelCallback):
    "SaveModelCallback over the whole plan: checkpoints/best.pth (weights, atomic) on improvement, loaded at the end."
    def __init__(self, monitor, file):
        super().__init__(monitor=monitor, reset_on_fit=False)
        self.file = Path(file)

    def after_epoch(self):
        "Compare and save, for epochs that ran."
        if epoch_was_run(self.learn): super().after_epoch()

    def _save(self, name):
        state = {k: tensor_data(v) for k, v in self.learn.model.state_dict().items()}
        self.last_saved_path = write_atomic(self.file, lambda p: torch.save(state, p))

    def after_fit(self, **kwargs):
        "Keep training from the last weights; `train` loads best.pth after the last stage."


class EarlyStop(EarlyStoppingCallback):
    "fastai's EarlyStoppingCallback for one stage, deciding at an epoch's end and stopping before the next one."
    def __init__(self, monitor, patience, restore=None):
        super().__init__(monitor=monitor, patience=patience)
        self.stop, self.restore = False, restore

    def before_fit(self):
        "Reset per stage, or take the state a resumed stage had."
        super().before_fit()
        self.stop = False
        if self.restore: self.best, self.wait = self.restore["best"], self.restore["wait"]
        self.restore = None

    def after_epoch(self):
        "Count epochs without improvement (so last.pth records the decision)."
        if not epoch_was_run(self.learn): return
        try:
            super().after_epoch()
        except CancelFitException:
            self.stop = True

    def before_epoch(self):
        "End the stage when patience ran out."
        if self.stop: raise CancelFitException()


class RunCheckpoint(Callback):
    "After every epoch: the history row, then checkpoints/last.pth (atomic), then history.csv."
    order = 65  # after BestModel (61) and EarlyStop (63)

    def __init__(self, run_dir, stage_idx, stage, history, best=None, early=None, restore=None):
        self.run_dir, self.stage_idx, self.stage, self.history = Path(run_dir), stage_idx, stage, history
        self.best_cb, self.early, self.restore = best, early, restore

    def before_fit(self):
        "On resume, continue the smoothed train loss where the killed run left it; log no skipped epochs."
        if self.restore:
            self.learn.recorder.smooth_loss.val = self.restore["val"]
            self.learn.recorder.smooth_loss.count = self.restore["count"]
            self.logger_run = logger = self.learn.logger
            self.learn.logger = self.logger_skip = lambda log: logger(log) if len(log) > 2 else None
        self.restore = None

    def after_fit(self):
        "Hand back the logger (unless fastai's progress callback already restored its own)."
        if getattr(self, "logger_skip", None) is not None and self.learn.logger is self.logger_skip:
            self.learn.logger = self.logger_run
        self.logger_skip = None

    def after_epoch(self):
        "Record and checkpoint an epoch that ran."
        if not epoch_was_run(self.learn): return
        rec = self.learn.recorder
        self.history.append({"stage": self.stage_idx + 1, "trains": self.stage["train"],
                             **{k: _plain_value(v) for k, v in zip(rec.metric_names, rec.log)}})
        done = self.epoch == self.n_epoch - 1 or bool(self.early and self.early.stop)
        save_last(self.learn, self.run_dir / "checkpoints" / "last.pth", self.stage_idx, self.epoch, done,
                  self.history, self.best_cb, self.early)
        write_history(self.history, self.run_dir / "history.csv")


def _plain_value(v):
    if isinstance(v, torch.Tensor): v = v.item()
    return v.item() if isinstance(v, np.generic) else v


def plain(obj):
    "numpy scalars/arrays and fastcore L as Python/torch types that torch.load(weights_only=True) reads."
    if isinstance(obj, dict): return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)): return [plain(v) for v in obj]
    if isinstance(obj, np.generic): return obj.item()
    if isinstance(obj, np.ndarray): return torch.from_numpy(obj.copy())
    if isinstance(obj, torch.Tensor): return tensor_data(obj)
    return obj


def tensor_data(t):
    "A plain CPU torch.Tensor (fastai's TensorBase subclasses do not load with weights_only=True)."
    return t.detach().cpu().as_subclass(torch.Tensor)


def rng_state(learn):
    "Every random state training draws from: Python, numpy, torch (CPU and CUDA), the DataLoaders' own."
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "dl_train": learn.dls.train.rng.getstate(), "dl_valid": learn.dls.valid.rng.getstate()}


def set_rng_state(learn, state):
    "Restore what rng_state saved."
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available(): torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for dl, key in ((learn.dls.train, "dl_train"), (learn.dls.valid, "dl_valid")):
        version, keys, gauss = state[key]
        dl.rng.setstate((version, tuple(keys), gauss))


def save_last(learn, path, stage_idx, epoch, done, history, best=None, early=None):
    "checkpoints/last.pth: weights, optimizer state, position in the plan, RNG and tracker states (atomic)."
    smooth = learn.recorder.smooth_loss
    state = {"model": {k: tensor_data(v) for k, v in learn.model.state_dict().items()},
             "opt": plain(learn.opt.state_dict()), "stage": stage_idx, "epoch": epoch, "stage_done": done,
             "pct_train": float(learn.pct_train), "rng": rng_state(learn), "history": history,
             "smooth_loss": {"val": plain(smooth.val), "count": int(smooth.count)},
             "best": None if best is None else float(best.best),
             "early": None if early is None else {"best": float(early.best), "wait": int(early.wait)}}
    write_atomic(path, lambda p: torch.save(state, p))


def load_last(path, device="cpu"):
    "The last.pth state (tensors on `device`, where the optimizer state must live), or None when there is none."
    path = Path(path)
    if not path.is_file(): return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CxrError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to restart that run") from None


def restore_training(learn, ckpt):
    "Weights and optimizer state of the killed run (after the stage's freezing is applied)."
    learn.model.load_state_dict(ckpt["model"])
    opt = ckpt["opt"]
    learn.opt.load_state_dict({"state": opt["state"], "hypers": L(opt["hypers"])})


def write_history(rows, path):
    "history.csv: one row per epoch run, all stages (atomic)."
    write_atomic(path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))


def next_position(ckpt):
    "(stage index, epoch) where a resumed run continues."
    if ckpt is None: return 0, 0
    return (ckpt["stage"] + 1, 0) if ckpt["stage_done"] else (ckpt["stage"], ckpt["epoch"] + 1)


def resume_hook(learn, ckpt, mid_stage):
    "What a resumed stage restores before its fit: the weights (and mid-stage the optimizer state), the RNG states."
    def restore():
        if mid_stage: restore_training(learn, ckpt)
        else: learn.model.load_state_dict(ckpt["model"])
        set_rng_state(learn, ckpt["rng"])
    return restore


def run_plan(learn, plan, run_dir, config, ckpt=None, cbs=None):
    "Fit every stage of the plan from where `ckpt` left off (checkpoints/best.pth kept when config['save_best'])."
    suggestion = config.get("lr_suggestion")
    history = list(ckpt["history"]) if ckpt else []
    best = BestModel(config["monitor"], Path(run_dir) / "checkpoints" / "best.pth") if config["save_best"] else None
    if best is not None and ckpt is not None and ckpt["best"] is not None: best.best = ckpt["best"]
    first_stage, first_epoch = next_position(ckpt)
    for i, stage in enumerate(plan):
        if i < first_stage: continue
        resumed = ckpt is not None and i == first_stage
        mid_stage = resumed and first_epoch > 0
        early = (EarlyStop(config["monitor"], config["patience"], ckpt["early"] if mid_stage else None)
                 if config["patience"] else None)
        checkpoint = RunCheckpoint(run_dir, i, stage, history, best, early, ckpt["smooth_loss"] if mid_stage else None)
        stage_cbs = [c for c in (best, early) if c is not None] + list(cbs or []) + [checkpoint]
        fit_stage(learn, stage, suggestion, stage_cbs, start_epoch=first_epoch if mid_stage else 0,
                  before_fit=resume_hook(learn, ckpt, mid_stage) if resumed else None)
    if ckpt is not None and first_stage >= len(plan): learn.model.load_state_dict(ckpt["model"])


# ---- configuration and the run folder --------------------------------------------------------

def resolve_config(c):
    "Check and coerce every option (the same for the CLI and Python); returns the configuration dict."
    check_arch(c["arch"])
    out = {**c}
    for key in ("pretrained", "lr_find", "oversample", "save_best", "train_bn", "mixed_precision", "bf16",
                "export_pkl", "resume", "overwrite", "concat_pool"):
        out[key] = as_bool(c[key], key.replace("_", "-"))
    for key, low in (("epochs", 1), ("freeze_epochs", 0), ("bs", 1), ("size", 16), ("seed", 0)):
        out[key] = as_int(c[key], key.replace("_", "-"), low)
    for key in ("patience", "num_workers"):
        out[key] = None if c[key] is None else as_int(c[key], key.replace("_", "-"), 1 if key == "patience" else 0)
    for key, low, high in (("dropout", 0, 1), ("label_smoothing", 0, 1), ("focal_alpha", 0, None),
                           ("focal_gamma", 0, None), ("valid_pct", 0, 0.9), ("test_pct", 0, 0.9)):
        out[key] = as_float(c[key], key.replace("_", "-"), low, high)
    for key, low, high in (("wd", 0, None), ("clip", 1e-12, None), ("subsample_majority", 1e-12, 1)):
        out[key] = None if c[key] is None else as_float(c[key], key.replace("_", "-"), low, high)
    out["hidden"] = None if c["hidden"] is None else as_list(c["hidden"], "hidden", int)
    out["opt"] = as_choice(c["opt"], OPTIMIZERS, "opt")
    out["loss"] = as_choice(c["loss"], LOSSES, "loss")
    from .blocks import AUG_PRESETS, RESIZE_METHODS
    out["aug"] = as_choice(c["aug"], AUG_PRESETS, "aug")
    out["resize_method"] = as_choice(c["resize_method"], RESIZE_METHODS, "resize-method")
    from .images import PREPROCESS
    out["preprocessing"] = as_choice(c["preprocessing"], PREPROCESS, "preprocessing")
    out["class_weights"] = class_weights_option(c["class_weights"])
    out["cache"] = cache_option(c["cache"])
    if out["resume"] and out["overwrite"]: raise CxrError("--resume and --overwrite exclude each other")
    if c["weights"]: out["weights"], out["pretrained"] = str(Path(str(c["weights"])).expanduser()), False
    lr = parse_lr(c["lr"], "lr")
    if isinstance(lr, str) and lr != "auto": raise CxrError("--lr is the base learning rate (a number or auto); "
                                                            "give lo:hi rates per stage in --plan")
    out["lr"] = lr
    out["plan"] = (parse_plan(c["plan"], lr)
                   or default_plan(out["epochs"], lr, out["freeze_epochs"], out["pretrained"] or bool(out["weights"])))
    out["monitor"] = str(c["monitor"])
    return out


def class_weights_option(value):
    "--class-weights as given: None, 'auto', a {class: weight} dict or a list of numbers."
    if value is None or value == "auto" or isinstance(value, dict): return value
    return as_list(value, "class-weights", float)


def cache_option(value):
    "--cache: false, true (the default folder) or a folder."
    if value is None or isinstance(value, bool): return bool(value)
    if str(value).strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return as_bool(value, "cache")
    return str(Path(str(value)).expanduser())


def check_resume(saved, config, run_dir):
    "Refuse to resume a run whose configuration differs in anything but `resume`."
    keys = (set(saved) | set(config)) - set(RESUME_FREE) - set(DERIVED)
    diff = sorted(k for k in keys if _jsonable(saved.get(k)) != _jsonable(config.get(k)))
    if diff:
        shown = "; ".join(f"{k}: {_jsonable(saved.get(k))!r} -> {_jsonable(config.get(k))!r}" for k in diff[:4])
        raise CxrError(f"cannot resume {run_dir}: the configuration differs from its config.json ({shown}); "
                       f"resume with the same options, or start a new run (another --out, or --overwrite)")


def _jsonable(v):
    return json.loads(json.dumps(v, default=str))


def prepare_run_dir(run_dir, config):
    "The saved configuration when resuming (None for a fresh run); refuses to overwrite a run unasked."
    saved_path = run_dir / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if config["resume"]:
        if saved is not None: check_resume(saved, config, run_dir)
        return saved
    if saved is not None and not config["overwrite"]:
        raise CxrError(f"{run_dir} already holds a run; pass --resume true to continue it, --overwrite true to "
                       f"start it again, or another --out")
    for name in ("checkpoints/last.pth", "checkpoints/best.pth", "history.csv"):
        (run_dir / name).unlink(missing_ok=True)
    return None


def write_config(config, run_dir):
    "config.json: the resolved configuration (atomic)."
    write_atomic(run_dir / "config.json", lambda p: p.write_text(json.dumps(config, indent=1, default=str)))


def get_table(config, table, source_options):
    "The canonical table: the one given, or data.load_table from source/root/task; majority subsampled if asked."
    if table is None:
        if not (config["source"] and config["root"]): raise CxrError("give SOURCE and ROOT (and --task), or table=")
        from .data import load_table
        table = load_table(config["source"], config["root"], config["task"], config["valid_pct"], config["test_pct"],
                           config["seed"], config["classes"], config["dedup"], **source_options)
    else:
        from .table import validate_table
        table = validate_table(table.copy())
    if config["subsample_majority"] is not None and config["subsample_majority"] < 1:
        table = subsample_majority_train(table, config["subsample_majority"], config["seed"])
    return table


def default_thresholds(classes, multilabel):
    "0.5 per class (multi-label) or for the positive class (binary); none for more classes."
    if multilabel: return {c: 0.5 for c in classes}
    return {"positive": 0.5} if len(classes) == 2 else {}


def model_meta(config, table, learn, results):
    "model.json for the model dir (modelio.REQUIRED_KEYS and the rest of the DESIGN contract)."
    classes, multilabel = classes_of(table), is_multilabel(table)
    return {"arch": config["arch"], "head": default_head(config["hidden"], config["dropout"], config["concat_pool"]),
            "n_out": int(learn.dls.c), "classes": classes, "task": table.attrs.get("task") or config["task"],
            "multilabel": multilabel, "loss": resolve_loss_name(config["loss"], multilabel),
            "loss_options": {"label_smoothing": config["label_smoothing"], "focal_alpha": config["focal_alpha"],
                             "focal_gamma": config["focal_gamma"], "class_weights": config.get("class_weight_values")},
            "img_size": config["size"], "resize_method": config["resize_method"],
            "preprocessing": config["preprocessing"],
            "normalize": {"mean": list(imagenet_stats[0]), "std": list(imagenet_stats[1])},
            "thresholds": (results or {}).get("thresholds") or default_thresholds(classes, multilabel),
            "data": {"source": table.attrs.get("source") or config["source"], "task": config["task"],
                     "split_method": table.attrs.get("split_method", "as given"),
                     "counts": summarize(table).to_dict()},
            "metrics": {k: v for k, v in (results or {}).items() if k != "thresholds"}}


def build_learner(config, table, run_dir, cbs=None):
    "DataLoaders + loss + cxr_learner for a resolved configuration (seeded)."
    from .blocks import get_dls
    set_seed(config["seed"], reproducible=True)
    multilabel = is_multilabel(table)
    dls = get_dls(table, size=config["size"], bs=config["bs"], aug=config["aug"], resize_method=config["resize_method"],
                  num_workers=config["num_workers"], seed=config["seed"], cache=config["cache"] or None,
                  preprocessing=config["preprocessing"],
                  weights=sampling_weights(table) if config["oversample"] else None)
    loss = make_loss(config["loss"], multilabel, config.get("class_weight_values"), config["label_smoothing"],
                     config["focal_alpha"], config["focal_gamma"])
    opt_func, default_wd = OPTIMIZERS[config["opt"]]
    head = default_head(config["hidden"], config["dropout"], config["concat_pool"])
    learn = cxr_learner(dls, config["arch"], head, config["pretrained"], config["weights"], loss_func=loss,
                        opt_func=opt_func, wd=default_wd if config["wd"] is None else config["wd"],
                        train_bn=config["train_bn"], path=run_dir, model_dir="checkpoints", cbs=cbs)
    if config["clip"]: learn.add_cb(GradientClip(config["clip"]))
    if config["mixed_precision"] and torch.cuda.is_available():
        from fastai.callback.channelslast import ChannelsLast
        learn.to_fp16()
        learn.add_cb(ChannelsLast())
    elif config["bf16"] and not torch.cuda.is_available():
        from .precision import CpuBF16Autocast
        learn.add_cb(CpuBF16Autocast())
    return learn


def find_lr(learn, config, saved):
    "lr_find's valley when asked for (or when a stage's lr is 'auto'); a resumed run reuses the saved one."
    if saved is not None and saved.get("lr_suggestion") is not None: return saved["lr_suggestion"]
    if not (config["lr_find"] or any(lr_uses_auto(s["lr"]) for s in config["plan"])): return None
    return float(learn.lr_find(show_plot=False).valley)


def train(source=None, root=None, task=None, *, table=None, arch="resnet18", out=None, plan=None, epochs=5,
          freeze_epochs=1, lr=2e-3, lr_find=False, pretrained=True, weights=None, hidden=None, dropout=0.5,
          concat_pool=True, opt="adamw", wd=None, clip=None, bs=32, size=224, aug="cxr", resize_method="squish",
          preprocessing="none",
          seed=42, loss="auto", label_smoothing=0.0, class_weights=None, focal_alpha=1.0, focal_gamma=2.0,
          subsample_majority=None, oversample=False, monitor="valid_loss", save_best=True, patience=None,
          train_bn=True, mixed_precision=True, bf16=False, cache=False, export_pkl=False, resume=False,
          overwrite=False, num_workers=None, valid_pct=0.2, test_pct=0.0, classes=None, dedup="warn", cbs=None,
          **source_options):
    """Train `arch` on a dataset (SOURCE ROOT --task, or a ready `table`), evaluate it, write RUN_DIR `out`.

    Returns evaluation.evaluate_run's dict ({"valid": {...}, "test": {...}, "thresholds": {...}}) plus "run_dir".

    Args:
      source, root, task: the dataset (data.load_table; several sources joined by '+'); or table=: a canonical table
      arch: resnet18, resnet34, resnet50, vgg16, vgg16_bn, densenet121 or any timm model name
      out: the run folder
      plan: freeze plan, 'WHAT:EPOCHS[@LR],...' or a list of {train, epochs, lr} dicts (module docstring);
        default: fine_tune(epochs, lr, freeze_epochs) for a pretrained body, else fit_one_cycle(epochs, lr)
      lr: base learning rate, a number or 'auto' (lr_find's valley); lr_find: run lr_find first, save its valley
      pretrained: start the body from ImageNet (fails at once, with what to do, when the weights cannot be had);
        weights: a weights file or a cxr_fast model/run folder whose body to transfer (replaces pretrained)
      hidden, dropout, concat_pool: the head (hidden layer sizes, e.g. [4300]; fastai's [512] when None)
      opt: adamw (fastai's Adam, decoupled weight decay, wd 0.01), adam (L2, wd 0), sgd (momentum .9, wd 0)
      wd: weight decay; clip: gradient-norm clipping (fastai GradientClip)
      bs, size, aug, resize_method, seed: batch size, image size, augmentation preset, squish/pad/crop, seed
      preprocessing: none or equalize (histogram equalisation at full resolution, before resizing; saved in
        model.json so predict does the same)
      loss: auto (ce or bce), ce, bce, focal (focal_alpha, focal_gamma); label_smoothing (ce);
        class_weights: 'auto' (inverse train frequency), a list or {class: weight} (single-label)
      subsample_majority: keep this fraction of the majority class's train patients; oversample: weighted sampling
      monitor: valid_loss, accuracy(_multi), f1_score: for best.pth (save_best) and early stopping (patience)
      train_bn: BatchNorm layers of frozen parts keep training (fastai's default)
      mixed_precision: fp16 + channels-last when CUDA is available; bf16: bfloat16 autocast on CPU
      cache: reuse decoded, resized images across epochs and runs (true: the default folder, or a folder)
      num_workers: image-decoding processes (default: one per spare core); export_pkl: also write export.pkl
      resume: continue the run in `out` from its last finished epoch; overwrite: start a run in `out` again
      valid_pct, test_pct, classes, dedup, **source_options: as for the `table` command
      cbs: extra fastai callbacks for every stage
    """
    given = {k: v for k, v in locals().items() if k not in ("table", "cbs", "source_options", "out")}
    if table is not None and (source is not None or root is not None or source_options):
        raise CxrError("give either a table or SOURCE ROOT (with source options), not both")
    if table is not None:
        given.update(source=table.attrs.get("source"), task=table.attrs.get("task") or task)
    given["source_options"] = {k.replace("-", "_"): v for k, v in source_options.items()}
    config = resolve_config(given)
    if config["pretrained"]: ensure_pretrained_available(config["arch"])
    run_dir = Path(out or f"runs/{config['arch']}-{config['task'] or 'table'}").expanduser()
    saved = prepare_run_dir(run_dir, config)
    table = get_table(config, table, config["source_options"])
    metric_ok = metric_names(is_multilabel(table))
    as_choice(config["monitor"], metric_ok, "monitor")
    config["table_sha1"] = table_sha1(table)
    if saved is not None and saved.get("table_sha1") not in (None, config["table_sha1"]):
        raise CxrError(f"cannot resume {run_dir}: the data (paths, splits or labels) differ from the run's table.csv")
    config["class_weight_values"] = class_weight_values(table, config["class_weights"])
    config["cxr_fast_version"] = __version__
    write_table(table, run_dir / "table.csv")
    learn = build_learner(config, table, run_dir)
    check_plan(learn, config["plan"])
    config["lr_suggestion"] = find_lr(learn, config, saved)
    write_config(config, run_dir)
    device = getattr(learn.dls, "device", None) or "cpu"
    ckpt = load_last(run_dir / "checkpoints" / "last.pth", device) if config["resume"] else None
    if ckpt is not None: print(f"resuming {run_dir} after stage {ckpt['stage'] + 1}, epoch {ckpt['epoch'] + 1}")
    try:
        run_plan(learn, config["plan"], run_dir, config, ckpt, cbs)
    except KeyboardInterrupt:
        print(f"interrupted: continue with --resume true (from {run_dir / 'checkpoints' / 'last.pth'})")
        raise
    return finish_run(learn, table, run_dir, config)


def finish_run(learn, table, run_dir, config):
    "Load the best weights (if kept), evaluate (evaluation.evaluate_run), write the model dir; the metrics dict."
    from . import evaluation
    from .modelio import save_model_dir
    best_file = run_dir / "checkpoints" / "best.pth"
    if config["save_best"] and best_file.is_file():
        learn.model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    results = evaluation.evaluate_run(learn, table, run_dir, config=config) or {}
    meta = model_meta(config, table, learn, results)
    save_model_dir(learn.model, run_dir / "model", meta, learn=learn if config["export_pkl"] else None)
    return {**results, "run_dir": str(run_dir)}


# ---- command line ----------------------------------------------------------------------------

def format_summary(results):
    "A few lines: the scalar metrics per split and the run folder."
    lines = []
    for split in ("valid", "test"):
        values = results.get(split) or {}
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars: lines.append(f"{split}: " + "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    lines.append(f"run folder: {results.get('run_dir')}")
    return "\n".join(lines)


@delegates(train, keep=True, but=["table", "cbs", "source_options"])
def train_command(source, root, task=None, out=None, **options):
    """Train a model on a dataset, evaluate it on the valid (and test) split, write a run folder.

    python -m cxr_fast train SOURCE ROOT --task TASK --arch ARCH --out RUN_DIR [options]

    Options (see `cxr_fast.training.train` for all): --arch, --plan 'head:2@1e-3,all:3@1e-5:1e-3',
    --epochs, --freeze-epochs, --lr (number or auto), --lr-find, --pretrained true|false, --weights PATH,
    --hidden 4300 --dropout 0.5, --opt adamw|adam|sgd, --wd, --clip, --bs, --size, --aug, --resize-method,
    --seed, --preprocessing none|equalize, --loss auto|ce|bce|focal, --focal-alpha, --focal-gamma, --label-smoothing, --class-weights auto,
    --subsample-majority 0.5, --oversample, --monitor, --save-best, --patience, --train-bn, --mixed-precision,
    --bf16, --cache, --export-pkl, --resume, --overwrite, --num-workers, --valid-pct, --test-pct, --classes,
    --dedup, and the source's own options (e.g. --balance for coronahack).
    """
    options = {k.replace("-", "_"): v for k, v in options.items()}
    if "help" in options:  # `train SOURCE ROOT --help`: Fire hands --help to **options
        print(inspect.cleandoc(__doc__) + "\n\n" + inspect.cleandoc(train.__doc__))
        return 0
    if out is None or str(out).strip() == "": raise CxrError("--out RUN_DIR is required")
    if "table" in options or "cbs" in options:
        raise CxrError("--table/--cbs are Python-only; give source 'table' and the CSV as ROOT")
    results = train(source, root, task, out=out, **options)
    print(format_summary(results))
    return 0
