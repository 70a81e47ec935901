"""Resume: checkpoints/last.pth after every epoch (weights, optimizer, RNG, trackers, history), best.pth, and
the callbacks that write them; `--resume true` continues a killed run from its last finished epoch.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback, TrackerCallback
from fastai.torch_core import get_random_states, set_random_states
from fastcore.foundation import L

from .distributed import plain_dl, unwrap
from ..core.errors import CxrError
from ..core.jsonio import jsonable
from .precision import scaler_state, set_scaler_state
from ..core.jsonio import write_atomic

RESUME_FREE = ("resume", "overwrite", "tracker", "tracker_dir", "sync_bn")  # config keys a resumed run may change
DERIVED = ("processes", "lr_suggestion", "table_sha1", "cxr_fast_version", "class_weight_values", "start_weights",
           "precision_used", "bs_used")  # not compared on resume


def epoch_was_run(learn):
    "False for an epoch that fit(start_epoch=...) skipped on resume (the recorder logged nothing for it)."
    return bool(learn.recorder.values) and len(learn.recorder.values[-1]) > 0


class BestModel(TrackerCallback):
    """checkpoints/best.pth (weights, atomic) whenever `monitor` improves, over the whole plan; `train` loads it
    after the last stage. Not fastai's SaveModelCallback: that loads the best weights back at the end of every
    fit, so each stage of a plan would start from them, and saves with learn.save, not atomically."""
    order = TrackerCallback.order + 1  # SaveModelCallback's place: before early stopping

    def __init__(self, monitor, file):
        super().__init__(monitor=monitor, reset_on_fit=False)  # the best over all stages
        self.file = Path(file)

    def after_epoch(self):
        "Save the weights when the monitored value improved (epochs that ran only)."
        if not epoch_was_run(self.learn): return
        super().after_epoch()
        if self.new_best:
            print(f"Better model found at epoch {self.epoch} with {self.monitor} value: {self.best}.")
            write_atomic(self.file, lambda p: torch.save(model_state(self.learn.model), p))


class EarlyStop(EarlyStoppingCallback):
    "fastai's EarlyStoppingCallback for one stage; a resumed stage starts from the killed run's best and wait."
    def __init__(self, monitor, patience, restore=None):
        super().__init__(monitor=monitor, patience=patience)
        self.restore = restore

    def before_fit(self):
        "Reset per stage, or take the state a resumed stage had."
        super().before_fit()
        if self.restore: self.best, self.wait = self.restore["best"], self.restore["wait"]
        self.restore = None

    def after_epoch(self):
        "Count epochs without improvement, and stop the stage when patience runs out (epochs that ran only)."
        if epoch_was_run(self.learn): super().after_epoch()


class ResumeRecorder(Callback):
    """A stage resumed mid-way: its smoothed train loss continues where the killed run left it, and the epochs
    fit(start_epoch=) skips are not logged. fastai has no hook for either: AvgSmoothLoss keeps its state in
    public `val`/`count` (Recorder.before_fit resets them, so they are set after it), and the log is filtered
    by wrapping learn.logger, as fastai's CSVLogger does."""
    order = 65  # after the Recorder (50) and fastai's ProgressCallback (60) set up the fit

    def __init__(self, smooth_loss): self.smooth_loss, self.logger_skip = smooth_loss, None

    def before_fit(self):
        "Restore the smoothed loss; log only the epochs that run."
        self.learn.recorder.smooth_loss.val = self.smooth_loss["val"]
        self.learn.recorder.smooth_loss.count = self.smooth_loss["count"]
        self.logger_run = logger = self.learn.logger
        self.learn.logger = self.logger_skip = lambda log: logger(log) if len(log) > 2 else None

    def after_fit(self):
        "Hand back the logger (unless fastai's progress callback already restored its own)."
        if self.learn.logger is self.logger_skip: self.learn.logger = self.logger_run


class RunCheckpoint(Callback):
    """After every epoch that ran: the history row, then checkpoints/last.pth, then history.csv (both atomic).
    Not fastai's CSVLogger: history.csv carries the stage and what it trains, and is rewritten with last.pth, so
    a resumed run's history is the uninterrupted run's."""
    order = 65  # after BestModel (61) and EarlyStop (63), so last.pth holds their decisions

    def __init__(self, run_dir, stage_idx, stage, history, best=None, early=None):
        self.run_dir, self.stage_idx, self.stage, self.history = Path(run_dir), stage_idx, stage, history
        self.best_cb, self.early, self.recorded = best, early, 0

    def after_epoch(self):
        "Record and checkpoint an epoch that ran."
        if epoch_was_run(self.learn): self.checkpoint(done=self.epoch == self.n_epoch - 1)

    def after_cancel_fit(self):
        "Early stopping ended the stage in its epoch's after_epoch, before ours: record that epoch, the stage done."
        if epoch_was_run(self.learn) and len(self.learn.recorder.values) > self.recorded: self.checkpoint(done=True)

    def checkpoint(self, done):
        "Append the epoch's row to the history, write last.pth and history.csv."
        rec = self.learn.recorder
        self.recorded = len(rec.values)
        self.history.append({"stage": self.stage_idx + 1, "trains": self.stage["train"],
                             **{k: jsonable(v) for k, v in zip(rec.metric_names, rec.log)}})
        save_last(self.learn, self.run_dir / "checkpoints" / "last.pth", self.stage_idx, self.epoch, done,
                  self.history, self.best_cb, self.early)
        write_history(self.history, self.run_dir / "history.csv")


def plain(obj):
    """numpy scalars/arrays and fastcore L as Python/torch types that torch.load(weights_only=True) reads
    (not jsonio.jsonable: tensors stay tensors)."""
    if isinstance(obj, dict): return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)): return [plain(v) for v in obj]
    if isinstance(obj, np.generic): return obj.item()
    if isinstance(obj, np.ndarray): return torch.from_numpy(obj.copy())
    if isinstance(obj, torch.Tensor): return tensor_data(obj)
    return obj


def tensor_data(t):
    "A plain CPU torch.Tensor (fastai's TensorBase subclasses do not load with weights_only=True)."
    return t.detach().cpu().as_subclass(torch.Tensor)


def model_state(model):
    "A model's state dict as plain CPU tensors (the module inside DistributedDataParallel: the same keys)."
    return {k: tensor_data(v) for k, v in unwrap(model).state_dict().items()}


def rng_state(learn):
    """Every random state training draws from: fastai's `get_random_states` (Python, numpy, torch CPU and CUDA, the
    cuDNN flags) as `plain` values that torch.load(weights_only=True) reads, and the DataLoaders' own."""
    return {**plain(get_random_states()), "dl_train": plain_dl(learn.dls.train).rng.getstate(),
            "dl_valid": plain_dl(learn.dls.valid).rng.getstate()}


OLD_RNG_KEYS = {"python": "random_state", "numpy": "numpy_state", "torch": "torch_state", "cuda": "torch_cuda_state"}


def set_rng_state(learn, state):
    """Restore what rng_state saved through fastai's `set_random_states`, after turning the saved values back into
    what it takes, which it does not do: tuples and a numpy array, CPU tensors (a checkpoint is loaded onto the
    training device), no CUDA states without CUDA. Reads checkpoints written before (keys python, numpy, ...)."""
    state = {OLD_RNG_KEYS.get(k, k): v for k, v in state.items()}
    version, keys, gauss = state["random_state"]
    name, np_keys, pos, has_gauss, cached = state["numpy_state"]
    cuda = [s.cpu() for s in state["torch_cuda_state"]] if torch.cuda.is_available() else []
    set_random_states(random_state=(version, tuple(keys), gauss),
                      numpy_state=(name, np_keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached),
                      torch_state=state["torch_state"].cpu(), torch_cuda_state=cuda,
                      torch_deterministic=state.get("torch_deterministic", torch.backends.cudnn.deterministic),
                      torch_benchmark=state.get("torch_benchmark", torch.backends.cudnn.benchmark))
    for dl, key in ((plain_dl(learn.dls.train), "dl_train"), (plain_dl(learn.dls.valid), "dl_valid")):
        version, keys, gauss = state[key]
        dl.rng.setstate((version, tuple(keys), gauss))


def save_last(learn, path, stage_idx, epoch, done, history, best=None, early=None):
    "checkpoints/last.pth: weights, optimizer state, position in the plan, RNG and tracker states (atomic)."
    smooth = learn.recorder.smooth_loss
    state = {"model": model_state(learn.model),
             "opt": plain(learn.opt.state_dict()), "stage": stage_idx, "epoch": epoch, "stage_done": done,
             "pct_train": float(learn.pct_train), "rng": rng_state(learn), "history": history,
             "smooth_loss": {"val": plain(smooth.val), "count": int(smooth.count)},
             "best": None if best is None else float(best.best),
             "early": None if early is None else {"best": float(early.best), "wait": int(early.wait)},
             "scaler": scaler_state(learn)}  # fp16's GradScaler (scale, growth tracker), None otherwise
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
        set_scaler_state(learn, ckpt.get("scaler"))  # the fit's GradScaler starts at the saved scale
    return restore


def check_resume(saved, config, run_dir):
    "Refuse to resume a run whose configuration differs in anything but `resume`."
    keys = (set(saved) | set(config)) - set(RESUME_FREE) - set(DERIVED)
    diff = sorted(k for k in keys if jsonable(saved.get(k)) != jsonable(config.get(k)))
    if diff:
        shown = "; ".join(f"{k}: {jsonable(saved.get(k))!r} -> {jsonable(config.get(k))!r}" for k in diff[:4])
        raise CxrError(f"cannot resume {run_dir}: the configuration differs from its config.json ({shown}); "
                       f"resume with the same options, or start a new run (another --out, or --overwrite)")

