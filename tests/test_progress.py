"""Console progress: one line per epoch when stdout is not a terminal, fastai's bars otherwise."""
import io

import pytest
from fastai.callback.progress import ProgressCallback
from fastai.test_utils import synth_learner

from cxr_fast.training.callbacks import EpochLines
from cxr_fast.training.progress import configure_progress, resolve_mode


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_redirected_stdout_gets_one_line_per_epoch_and_no_bar_frames(capsys):
    learn = synth_learner(n_trn=8, n_val=4)
    out = io.StringIO()
    assert configure_progress(learn, stream=out) == "lines"
    assert not any(isinstance(cb, ProgressCallback) for cb in learn.cbs)
    learn.fit(3, 1e-2)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("train_loss " in line and "valid_loss " in line and "time " in line for line in lines)
    assert "\r" not in out.getvalue() and "█" not in out.getvalue()
    assert capsys.readouterr().out == ""  # nothing else went to stdout (no bars, no header list)
    assert learn.logger is print  # the logger is handed back after the fit


def test_the_default_stream_is_stdout_at_print_time(capsys):
    learn = synth_learner(n_trn=8, n_val=4)
    configure_progress(learn, mode="lines")
    learn.fit(2, 1e-2)
    assert [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_a_terminal_keeps_fastais_bars_and_no_logging_stays_silent():
    learn = synth_learner(n_trn=8, n_val=4)
    assert configure_progress(learn, stream=FakeTerminal()) == "bar"
    assert sum(isinstance(cb, ProgressCallback) for cb in learn.cbs) == 1
    out = io.StringIO()
    configure_progress(learn, mode="lines", stream=out)
    assert sum(isinstance(cb, EpochLines) for cb in learn.cbs) == 1 and not any(isinstance(cb, ProgressCallback) for cb in learn.cbs)
    with learn.no_logging():
        learn.fit(1, 1e-2)
    assert out.getvalue() == ""
    configure_progress(learn, mode="none")
    assert not any(isinstance(cb, (ProgressCallback, EpochLines)) for cb in learn.cbs)


def test_mode_from_the_environment_and_bad_modes(monkeypatch):
    monkeypatch.setenv("CXR_FAST_PROGRESS", "bar")
    assert resolve_mode(stream=io.StringIO()) == "bar"
    monkeypatch.delenv("CXR_FAST_PROGRESS")
    assert resolve_mode(stream=io.StringIO()) == "lines"
    with pytest.raises(ValueError, match="choose one of"):
        resolve_mode("fancy")


def test_a_csv_logger_added_for_the_fit_still_gets_every_epoch(tmp_path):
    from fastai.callback.progress import CSVLogger
    learn = synth_learner(n_trn=8, n_val=4, path=tmp_path)
    out = io.StringIO()
    configure_progress(learn, mode="lines", stream=out)
    learn.fit(2, 1e-2, cbs=CSVLogger(fname="history.csv"))
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,valid_loss") and len(rows) == 3
    assert len(out.getvalue().splitlines()) == 2
