"""The fastai callbacks of a training run, in one place with their order among fastai's own.

Each `order` is stated relative to the fastai callback it must follow or precede (a callback with a lower order
runs first at every event):

    TrainEvalCallback (-10)          fastai puts the model in train/eval mode
    BodyBnStats (TrainEvalCallback + 1)  then the body's BatchNorm layers back in eval mode (bn_stats='fixed')
    Recorder (50)                    the epoch's values exist from here on
    EpochLines (Recorder + 5)        replaces the print logger (ProgressCallback's job) before the wrappers below
    CSVLogger, ProgressCallback (60) fastai's, wrap/replace learn.logger
    BestModel (TrackerCallback + 1)  SaveModelCallback's place: best.pth when the monitored value improves
    EarlyStop (EarlyStoppingCallback) fastai's place, after BestModel has seen the epoch
    ResumeRecorder (ProgressCallback + 1)  a resumed stage's smoothed loss and log filter, after the logger is set
    RunCheckpoint (EarlyStoppingCallback + 1)  history.csv and last.pth, holding BestModel's and EarlyStop's decisions

Precision's callbacks (ChannelsLast, autocast) are in precision.py, the trackers' in tracking/, evaluation's TTA
views in evaluation/runs.py, the data-parallel trainer in data_parallel.py, tune's pruning in apps/tune.py.
"""
import sys
from pathlib import Path

import torch
from torch import nn
from fastai.callback.core import Callback, TrainEvalCallback
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import EarlyStoppingCallback, TrackerCallback
from fastai.imports import noop  # fastai's own noop: what Learner.no_logging() sets
from fastai.learner import Recorder

from ..core.jsonio import jsonable, write_atomic
from .checkpoints import model_state, save_last, write_history


def epoch_ran(learn):
    "False for an epoch that fit(start_epoch=...) skipped on resume (the recorder logged nothing for it)."
    return bool(learn.recorder.values) and len(learn.recorder.values[-1]) > 0


# ---- console ---------------------------------------------------------------------------------

def _fmt(value):
    "A log value as printed: floats with 4 decimals, the rest as they are."
    if isinstance(value, float): return f"{value:.4f}"
    return str(value)


class EpochLines(Callback):
    """Print one line per epoch (epoch n/N and every recorded value) instead of progress bars (progress.py).

    It takes the place of `ProgressCallback` in replacing the learner's `print` logger, and sets up before
    every callback that wraps `learn.logger` (fastai's CSVLogger, a resumed run's ResumeRecorder), so their
    wrappers chain onto it instead of being replaced by it."""
    order = Recorder.order + 5  # after the Recorder (its metric names), before CSVLogger/ProgressCallback's order

    def __init__(self, stream=None):
        self.stream = stream  # None: sys.stdout at the time of printing (pytest's capture, redirections)
        self.write = self._write  # one bound method, so `learn.logger is self.write` can tell it is ours

    def before_fit(self):
        "Take over the learner's logger for this fit (unless logging is off)."
        if self.learn.logger is noop:
            self.old_logger = noop
            return
        self.old_logger, self.learn.logger = self.learn.logger, self.write

    def after_fit(self):
        "Give the logger back."
        if getattr(self, "old_logger", None) is not None and self.learn.logger is self.write:
            self.learn.logger = self.old_logger
        self.old_logger = None

    def _write(self, log):
        "Print one Recorder log (a list of epoch, losses, metrics, time) as one line."
        names = list(self.learn.recorder.metric_names)
        values = list(log)
        if len(values) != len(names) or not values: return  # not an epoch row
        epoch = values[0]
        parts = [f"epoch {int(epoch) + 1}/{self.n_epoch}" if isinstance(epoch, int) else f"epoch {epoch}"]
        parts += [f"{name} {_fmt(v)}" for name, v in zip(names[1:], values[1:])]
        stream = self.stream if self.stream is not None else sys.stdout
        print("  ".join(parts), file=stream, flush=True)


# ---- best model, early stopping, resume -------------------------------------------------------

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
        if not epoch_ran(self.learn): return
        super().after_epoch()
        if self.new_best:
            print(f"Better model found at epoch {self.epoch} with {self.monitor} value: {self.best}.")
            write_atomic(self.file, lambda p: torch.save(model_state(self.learn.model), p))


class EarlyStop(EarlyStoppingCallback):
    "fastai's EarlyStoppingCallback for one stage; a resumed stage starts from the killed run's best and wait."
    order = EarlyStoppingCallback.order  # fastai's: after BestModel has seen the epoch

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
        if epoch_ran(self.learn): super().after_epoch()


class ResumeRecorder(Callback):
    """A stage resumed mid-way: its smoothed train loss continues where the killed run left it, and the epochs
    fit(start_epoch=) skips are not logged. fastai has no hook for either: AvgSmoothLoss keeps its state in
    public `val`/`count` (Recorder.before_fit resets them, so they are set after it), and the log is filtered
    by wrapping learn.logger, as fastai's CSVLogger does."""
    order = max(ProgressCallback.order, CSVLogger.order) + 1  # after the Recorder's reset and the loggers' set-up

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
    order = EarlyStop.order + 1  # after BestModel and EarlyStop, so last.pth holds their decisions

    def __init__(self, run_dir, stage_idx, stage, history, best=None, early=None):
        self.run_dir, self.stage_idx, self.stage, self.history = Path(run_dir), stage_idx, stage, history
        self.best_cb, self.early, self.recorded = best, early, 0

    def after_epoch(self):
        "Record and checkpoint an epoch that ran."
        if epoch_ran(self.learn): self.checkpoint(done=self.epoch == self.n_epoch - 1)

    def after_cancel_fit(self):
        "Early stopping ended the stage in its epoch's after_epoch, before ours: record that epoch, the stage done."
        if epoch_ran(self.learn) and len(self.learn.recorder.values) > self.recorded: self.checkpoint(done=True)

    def checkpoint(self, done):
        "Append the epoch's row to the history, write last.pth and history.csv."
        rec = self.learn.recorder
        self.recorded = len(rec.values)
        self.history.append({"stage": self.stage_idx + 1, "trains": self.stage["train"],
                             **{k: jsonable(v) for k, v in zip(rec.metric_names, rec.log)}})
        save_last(self.learn, self.run_dir / "checkpoints" / "last.pth", self.stage_idx, self.epoch, done,
                  self.history, self.best_cb, self.early)
        write_history(self.history, self.run_dir / "history.csv")


# ---- BatchNorm ---------------------------------------------------------------------------------

class BodyBnStats(Callback):
    """bn_stats='fixed': the body's BatchNorm layers normalise with their pretrained running statistics in every
    stage (eval mode), unfrozen ones too; their weights train where the body is unfrozen. With fastai's BnFreeze
    ('frozen'), unfreezing switches the body to the statistics of each small batch and the head, trained on the
    other features, saw the demo's training loss jump (0.65 -> 2.80 at lr 2e-4; 'fixed': 0.65 -> 0.35). Only for
    gentle fine-tunes: at lr 2e-3 on the top groups, the unfrozen stage diverged on DarkCovidNet (valid accuracy to
    0.11, one class, in fp32 and bf16) where 'frozen' and 'train' did not. The head's BatchNorm trains."""
    order = TrainEvalCallback.order + 1  # after fastai has put the model in train mode

    def before_train(self):
        for m in self.learn.model[0].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm): m.eval()
