"""The `csv` tracker: fastai's CSVLogger into RUN_DIR/epochs.csv (every stage appended, one header) and
RUN_DIR/final_metrics.csv at the end."""
import pandas as pd
from fastai.callback.progress import CSVLogger

from ...core.jsonio import write_atomic
from .base import Tracker, final_metrics, read_config


class OneHeaderCSVLogger(CSVLogger):
    "CSVLogger appending every stage to one file, its header written once (a fresh run starts a new file)."
    order = CSVLogger.order  # fastai's: after EpochLines (Recorder.order + 5) has set learn.logger, which it wraps

    def __init__(self, run_dir, fname, append=True):
        super().__init__(fname, append=append)
        self.run_dir, self.started = run_dir, False

    def before_fit(self):
        path = self.path / self.fname
        if not self.started and not read_config(self.run_dir).get("resume"):
            path.unlink(missing_ok=True)
        self.started = True
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file() or path.stat().st_size == 0
        self.file = path.open("a")
        if fresh: self.file.write(",".join(self.recorder.metric_names) + "\n")
        self.old_logger, self.learn.logger = self.logger, self._write_line


class CsvTracker(Tracker):
    "fastai's CSVLogger into RUN_DIR/epochs.csv (every stage appended, one header), final_metrics.csv at the end."
    name = "csv"

    def callbacks(self):
        return [OneHeaderCSVLogger(self.run_dir, self.run_dir.resolve() / "epochs.csv", append=True)]

    def finish(self, results):
        rows = [{"metric": k, "value": v} for k, v in final_metrics(results).items()]
        write_atomic(self.run_dir / "final_metrics.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
