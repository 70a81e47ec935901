"""Console progress that stays readable in a log file: one line per epoch when stdout is not a terminal.

fastai's `ProgressCallback` redraws its bars with carriage returns; in a terminal or a notebook that is
what you want, but redirected to a file (`train ... > log.txt`, CI, `nohup`) every redraw is kept and a
16-epoch recipe log grows to hundreds of kilobytes of bar frames. `configure_progress(learn)` swaps the
bars for `EpochLines`, which prints one line per epoch, when the output is not an interactive terminal:

    epoch 3/16  train_loss 0.4012  valid_loss 0.3876  accuracy 0.8750  time 00:41

Jupyter (stdout is not a terminal there either, but its bars are an HTML widget) keeps fastai's bars.
`mode`: "auto" (the rule above), "bar" (fastai's bars), "lines" (always one line per epoch), "none".
The environment variable CXR_FAST_PROGRESS sets the mode when none is given.
"""
import os
import sys

from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.imports import noop  # fastai's own noop: what Learner.no_logging() sets

MODES = ("auto", "bar", "lines", "none")
ENV_VAR = "CXR_FAST_PROGRESS"


def _is_terminal(stream):
    "True when `stream` is an interactive terminal."
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook():
    "True inside a Jupyter kernel, where fastai's bars render as a widget."
    from fastcore.imports import in_notebook
    return bool(in_notebook())


def resolve_mode(mode=None, stream=None):
    "The progress mode to use: 'bar', 'lines' or 'none' (see the module docstring)."
    mode = (mode or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if mode not in MODES: raise ValueError(f"progress mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode != "auto": return mode
    return "bar" if _in_notebook() or _is_terminal(stream if stream is not None else sys.stdout) else "lines"


def _fmt(value):
    "A log value as printed: floats with 4 decimals, the rest as they are."
    if isinstance(value, float): return f"{value:.4f}"
    return str(value)


class EpochLines(Callback):
    """Print one line per epoch (epoch n/N and every recorded value) instead of progress bars.

    It takes the place of `ProgressCallback` in replacing the learner's `print` logger, and sets up before
    every callback that wraps `learn.logger` (fastai's CSVLogger at 60, a resumed run's ResumeRecorder at 65),
    so their wrappers chain onto it instead of being replaced by it."""
    order = 55  # after the Recorder (50), before the logger wrappers (60+)

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


def configure_progress(learn, mode=None, stream=None):
    """Set up `learn`'s console progress for `mode` (see module docstring); returns the mode used.

    'lines' replaces ProgressCallback by EpochLines, 'none' removes both, 'bar' restores fastai's bars."""
    mode = resolve_mode(mode, stream)
    for cb in [cb for cb in learn.cbs if isinstance(cb, (ProgressCallback, EpochLines))]:
        learn.remove_cb(cb)
    if mode == "bar": learn.add_cb(ProgressCallback())
    elif mode == "lines": learn.add_cb(EpochLines(stream))
    return mode
