"""The data-parallel callback: fastai's `DistributedTrainer` over gloo-safe DataLoaders, with whole-valid-set loss
and metrics. Imports fastai.distributed (hence Hugging Face Accelerate), so distributed.py loads it only inside a
launch of several processes."""
import torch
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import AvgMetric
from fastai.metrics import AccumMetric


class GlooDistributedDL(DistributedDL):
    "DistributedDL whose index broadcast uses a CPU tensor with gloo (fastai's is CUDA-only, for nccl)."
    def _broadcast(self, t, rank):
        t = torch.LongTensor(t)
        if torch.distributed.get_backend() == "nccl": t = t.cuda()
        torch.distributed.broadcast(t, rank)
        return t.cpu().tolist()


class DataParallelTrainer(DistributedTrainer):
    "DistributedTrainer (fastai) over GlooDistributedDL; unwraps to the plain model after each fit."
    def _wrap_dl(self, dl):
        if isinstance(dl, DistributedDL): return dl
        return GlooDistributedDL(dl, device=self.accelerator.device)

    def before_fit(self):
        super().before_fit()
        self.old_loss, self.old_metrics = self.learn.recorder.loss, self.learn.metrics
        self.learn.recorder.loss = whole_set_loss(self.learn)
        self.learn.metrics = [whole_set_metric(m) for m in self.old_metrics]

    def after_fit(self):
        # Accelerate's unwrap_model: the module inside DistributedDataParallel, or the model itself
        self.learn.model, self.learn.dls.loaders = self.accelerator.unwrap_model(self.learn.model), self.old_dls
        self.learn.recorder.loss, self.learn.metrics = self.old_loss, self.old_metrics


def whole_set_metric(metric):
    """An `AvgMetric` (fastai's accuracy: per-process means averaged over a valid set padded to a multiple of the
    process count) as an `AccumMetric` of the same name: computed once on every process's predictions, gathered
    with the padding removed. Other metrics (AccumMetric: F1, AUC) already are."""
    if type(metric) is not AvgMetric: return metric
    return AccumMetric(metric.func, flatten=False, name=metric.name)


def whole_set_loss(learn):
    "The recorder's valid loss as the loss function over every process's gathered predictions (padding removed)."
    device = learn.dls.device

    def loss(preds, targs):
        return learn.loss_func(preds.to(device), targs.to(device)).mean()
    return AccumMetric(loss, flatten=False, name="loss")
