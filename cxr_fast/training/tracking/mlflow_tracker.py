"""The `mlflow` tracker: MLflow's tracking API (params, per-epoch metrics with step = epoch over all stages, final
metrics, figures, report, config and model/ as artifacts). Imported only when a run uses it; mlflow itself is
imported on first use, after MLFLOW_ALLOW_FILE_STORE is set for a file store."""
import json
import math
import os
import time

from ...core.errors import CxrError
from ...core.jsonio import write_atomic
from .base import RUN_FILES, EpochCallback, Tracker, epochs_done, figures, final_metrics, flat_config, read_config


class MlflowEpochs(EpochCallback):
    "Each epoch's values into the tracker's MLflow run, which it starts (or continues) before the first fit."
    order = EpochCallback.order  # after the Recorder has the epoch's values

    def __init__(self, tracker, first_step=0):
        super().__init__(tracker.log_epoch, first_step)
        self.tracker = tracker

    def before_fit(self):
        self.tracker.start()


class MlflowTracker(Tracker):
    "MLflow's tracking API: params, per-epoch metrics (step = epoch over all stages), final metrics, artifacts."
    name = "mlflow"

    def __init__(self, run_dir, tracker_dir=None):
        super().__init__(run_dir, tracker_dir)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.tracker_dir / "mlruns").resolve().as_uri()
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.experiment
        self.client, self.run_id = None, None

    def _client(self):
        if self.client is None:
            if self.uri.startswith("file:"): os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient  # the `track` extra, after MLFLOW_ALLOW_FILE_STORE is set
            self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def _experiment_id(self):
        client = self._client()
        for _ in range(5):  # several tune workers may create the experiment at the same moment
            found = client.get_experiment_by_name(self.experiment)
            if found is not None: return found.experiment_id
            try:
                return client.create_experiment(self.experiment)
            except Exception:
                time.sleep(0.2)
        raise CxrError(f"MLflow: cannot create or find experiment {self.experiment!r} at {self.uri}")

    def start(self):
        "The MLflow run of this run folder: the one a resumed run started (RUN_DIR/mlflow_run.json), else a new one."
        if self.run_id is not None: return self.run_id
        client, marker = self._client(), self.run_dir / "mlflow_run.json"
        from mlflow.entities import Param  # after _client(): mlflow is imported there
        saved = json.loads(marker.read_text()) if marker.is_file() else {}
        if saved.get("uri") == self.uri and read_config(self.run_dir).get("resume"):
            self.run_id = saved["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        run = client.create_run(self._experiment_id(), run_name=self.run_name,
                                tags={"cxr_fast.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        write_atomic(marker, lambda p: p.write_text(json.dumps({"uri": self.uri, "run_id": self.run_id})))
        params = [Param(k, v) for k, v in flat_config(read_config(self.run_dir)).items()]
        for i in range(0, len(params), 100): client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def log_epoch(self, step, values):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self._client().log_batch(self.start(), metrics=[Metric(k, v, now, step) for k, v in values.items()
                                                        if math.isfinite(v)])

    def callbacks(self):
        return [MlflowEpochs(self, epochs_done(self.run_dir))]

    def finish(self, results):
        from mlflow.entities import Metric
        client, run_id = self._client(), self.start()
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in final_metrics(results).items()])
        for path in figures(self.run_dir): client.log_artifact(run_id, str(path), "figures")
        for name in RUN_FILES:
            if (self.run_dir / name).is_file(): client.log_artifact(run_id, str(self.run_dir / name))
        if (self.run_dir / "model").is_dir(): client.log_artifacts(run_id, str(self.run_dir / "model"), "model")
        client.set_terminated(run_id, "FINISHED")

    def close(self, status="FAILED"):
        if self.run_id is not None: self._client().set_terminated(self.run_id, status)
