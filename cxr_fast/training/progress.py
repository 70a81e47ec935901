"""Console progress that stays readable in a log file: one line per epoch when stdout is not a terminal.

fastai's `ProgressCallback` redraws its bars with carriage returns; in a terminal or a notebook that is
what you want, but redirected to a file (`train ... > log.txt`, CI, `nohup`) every redraw is kept and a
16-epoch recipe log grows to hundreds of kilobytes of bar frames. `configure_progress(learn)` swaps the
bars for `EpochLines` (callbacks.py), which prints one line per epoch, when the output is not an interactive terminal:

    epoch 3/16  train_loss 0.4012  valid_loss 0.3876  accuracy 0.8750  time 00:41

Jupyter (stdout is not a terminal there either, but its bars are an HTML widget) keeps fastai's bars.
`mode`: "auto" (the rule above), "bar" (fastai's bars), "lines" (always one line per epoch), "none".
The environment variable CXR_FAST_PROGRESS sets the mode when none is given.
"""
import os
import sys

from fastai.callback.progress import ProgressCallback

from .callbacks import EpochLines

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


def configure_progress(learn, mode=None, stream=None):
    """Set up `learn`'s console progress for `mode` (see module docstring); returns the mode used.

    'lines' replaces ProgressCallback by EpochLines, 'none' removes both, 'bar' restores fastai's bars."""
    mode = resolve_mode(mode, stream)
    for cb in [cb for cb in learn.cbs if isinstance(cb, (ProgressCallback, EpochLines))]:
        learn.remove_cb(cb)
    if mode == "bar": learn.add_cb(ProgressCallback())
    elif mode == "lines": learn.add_cb(EpochLines(stream))
    return mode
