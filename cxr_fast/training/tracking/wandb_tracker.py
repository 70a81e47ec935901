"""The `wandb` tracker: fastai's WandbCallback in a W&B run (offline unless WANDB_MODE says otherwise); figures,
summary and the model as an artifact at the end. Imported only when a run uses it (it imports wandb)."""
import os

import wandb  # the `track` extra
from fastai.callback.wandb import WandbCallback

from ..callbacks import epoch_ran
from .base import Tracker, epochs_done, figures, final_metrics, read_config


class StartedWandb(WandbCallback):
    """WandbCallback (per-batch train loss and hyper-parameters, per-epoch metrics) in the tracker's run.
    Its before_fit is fastai's without `learn.gather_args()`, which fails on this Learner's arguments (it
    recurses into objects without __dict__): the configuration is config.json, given to wandb.init."""
    order = WandbCallback.order  # fastai's (Recorder.order + 1): after the Recorder has the values

    def __init__(self, tracker):
        super().__init__(log=None, log_preds=False, log_model=False)
        self.tracker = tracker

    def before_fit(self):
        run = self.tracker.start()
        if not hasattr(self, "_wandb_step"):  # the first stage; later ones continue the counts
            self._wandb_step, self._wandb_epoch = run.step - 1, epochs_done(self.tracker.run_dir)
        self.run = not hasattr(self.learn, "lr_finder")

    def after_epoch(self):
        if epoch_ran(self.learn): super().after_epoch()


class WandbTracker(Tracker):
    "fastai's WandbCallback in a W&B run (offline unless WANDB_MODE says otherwise); figures, summary, model artifact."
    name = "wandb"

    def __init__(self, run_dir, tracker_dir=None):
        super().__init__(run_dir, tracker_dir)
        self.project = os.environ.get("WANDB_PROJECT") or self.experiment
        self.run = None

    def start(self):
        "wandb.init for this run folder (once)."
        if self.run is not None: return self.run
        folder = self.tracker_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=self.run_name, dir=str(folder),
                              mode=os.environ.get("WANDB_MODE", "offline"), config=read_config(self.run_dir))
        return self.run

    def callbacks(self):
        return [StartedWandb(self)]

    def finish(self, results):
        run = self.start()
        run.summary.update(final_metrics(results))
        images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in figures(self.run_dir)}
        if images: run.log(images)
        if (self.run_dir / "model").is_dir():
            artifact = wandb.Artifact(f"model-{self.run_name}", type="model")
            artifact.add_dir(str(self.run_dir / "model"))
            run.log_artifact(artifact)
        run.finish()
        self.run = None

    def close(self, status="FAILED"):
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None
