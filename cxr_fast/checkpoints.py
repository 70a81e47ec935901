"""Resume: checkpoints/last.pth after every epoch (weights, optimizer, RNG, trackers, history), best.pth, and
the callbacks that write them; `--resume true` continues a killed run from its last finished epoch.
"""
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from fastcore.foundation import L

from .errors import CxrError
from .table import write_atomic

RESUME_FREE = ("resume", "overwrite")  # config keys a resumed run may change
DERIVED = ("lr_suggestion", "table_sha1", "cxr_fast_version", "class_weight_values", "start_weights")  # not compared on resume


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
