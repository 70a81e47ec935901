"""The `tensorboard` tracker: fastai's TensorBoardCallback (one step count over all stages and resumed runs); config as
text, figures as images and hparams at the end. Imported only when a run uses it (it imports tensorboard)."""
import json

import numpy as np
from fastai.callback.tensorboard import TensorBoardCallback  # imports tensorboard, the `track` extra
from PIL import Image

from .base import Tracker, epochs_done, figures, final_metrics, read_config


class StagedTensorBoard(TensorBoardCallback):
    "TensorBoardCallback whose step continues across fits (stages) and resumed runs."
    order = TensorBoardCallback.order  # fastai's (Recorder.order + 1): after the Recorder has the batch's values

    def __init__(self, log_dir, steps_before=0):
        super().__init__(log_dir, trace_model=False, log_preds=False)
        self.steps_before, self.offset = steps_before, None

    @property
    def train_iter(self):
        return self.offset + self.learn.train_iter

    def before_fit(self):
        if self.offset is None: self.offset = self.steps_before * len(self.learn.dls.train)
        super().before_fit()

    def after_batch(self):
        """fastai's also runs after valid batches and reads learn.smooth_loss, which an epoch without a training
        batch (a training split smaller than one batch) does not have."""
        if self.training and hasattr(self.learn, "smooth_loss"): super().after_batch()

    def after_fit(self):
        self.offset += self.learn.train_iter
        super().after_fit()


class TensorBoardTracker(Tracker):
    "fastai's TensorBoardCallback (one step count over all stages); config as text, figures as images, hparams."
    name = "tensorboard"

    @property
    def log_dir(self):
        return self.tracker_dir / "tensorboard" / self.run_name

    def callbacks(self):
        return [StagedTensorBoard(str(self.log_dir), epochs_done(self.run_dir))]

    def finish(self, results):
        from torch.utils.tensorboard import SummaryWriter
        config, metrics = read_config(self.run_dir), final_metrics(results)
        writer = SummaryWriter(log_dir=str(self.log_dir))
        try:
            writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")
            writer.add_text("run_dir", str(self.run_dir.resolve()))
            for key, value in metrics.items(): writer.add_scalar(f"final/{key}", value, 0)
            for path in figures(self.run_dir):
                image = np.asarray(Image.open(path).convert("RGB"))
                writer.add_image(f"figures/{path.stem}", image, 0, dataformats="HWC")
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str))
                       for k, v in config.items() if v is not None}
            writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        finally:
            writer.close()
