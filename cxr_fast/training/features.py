"""Frozen-feature head training: a head-only stage trained on the frozen body's features, computed once.

With `frozen_features=True`, a plan stage that trains the head only (`head:EPOCHS`) runs the body once over the
train split (without augmentation, in eval mode: BatchNorm keeps its running statistics) and over the valid split,
keeps the head's pooled features, and trains the rest of the head on them for the stage's epochs
(`fit_head_on_features`): one body pass instead of one per epoch. What it gives up in that stage: augmentation (the
features are of the un-augmented images) and BatchNorm training in the body (its statistics and, with
train_bn, its affine weights stay as they are). Valid metrics are the same computation as end to end (eval mode).
The stage writes the run folder as any other (history.csv rows, checkpoints/last.pth, best.pth hold the whole
model); a run killed inside such a stage resumes at its next epoch with a fresh optimiser state.
"""
import torch
from fastai.callback.training import GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch import nn

from ..core.errors import CxrError
from ..data.blocks import test_dl
from .distributed import world_size
from .plans import apply_stage, to_fastai_lr
from .progress import configure_progress

POOLING = ("Pool", "Flatten")  # parameter-free layers the features pass: torch's and fastai's pools and Flatten


def uses_frozen_features(stage, config):
    "Whether a stage trains on precomputed features: a head-only stage of a run with frozen_features."
    return bool(config.get("frozen_features")) and stage["train"] == "head"


def pooling_depth(head):
    "How many of the head's first layers pool and flatten (no parameters): the features are their output."
    n = 0
    for layer in head:
        if list(layer.parameters()) or not any(k in type(layer).__name__ for k in POOLING): break
        n += 1
    if n == 0: raise CxrError("frozen_features needs a head that starts with pooling (fastai's create_head)")
    return n


class FeatureHead(nn.Module):
    """The head's layers after its pooling, fed pooled features. Its state_dict is the whole model's, so the
    checkpoints a stage writes (best.pth, last.pth) hold the model `predict` loads."""

    def __init__(self, model, n_pool):
        super().__init__()
        self.tail = model[1][n_pool:]
        self.whole = [model]  # a list: not a submodule (its parameters are not the features learner's)

    def forward(self, x): return self.tail(x)

    def state_dict(self, *args, **kwargs): return self.whole[0].state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict=True): return self.whole[0].load_state_dict(state_dict, strict)


def pooled_features(learn, dl, n_pool):
    "(features, targets) of every item of `dl`: the head's pooled input, from one eval-mode pass (learn's precision)."
    store = []
    hook = learn.model[1][n_pool - 1].register_forward_hook(lambda m, i, o: store.append(o.detach().float().cpu()))
    try:
        _, targets = learn.get_preds(dl=dl)
    finally:
        hook.remove()
    return torch.cat(store), targets.as_subclass(torch.Tensor)


def feature_dls(learn, n_pool, bs):
    "DataLoaders of pooled features: train (shuffled, full batches) from un-augmented train images, valid."
    table = learn.dls.table
    train = pooled_features(learn, test_dl(learn.dls, table[table["split"] == "train"]), n_pool)
    valid = pooled_features(learn, learn.dls.valid, n_pool)
    device = getattr(learn.dls, "device", None)
    return DataLoaders(DataLoader(torch.utils.data.TensorDataset(*train), bs=bs, shuffle=True, drop_last=True,
                                  device=device),
                       DataLoader(torch.utils.data.TensorDataset(*valid), bs=bs, device=device))


def features_learner(learn, n_pool, bs):
    "A Learner of the head's tail on pooled features, with learn's loss, metrics, optimiser and gradient clipping."
    clip = [GradientClip(cb.max_norm) for cb in learn.cbs if isinstance(cb, GradientClip)]
    feat = Learner(feature_dls(learn, n_pool, bs), FeatureHead(learn.model, n_pool), loss_func=learn.loss_func,
                   metrics=learn.metrics, opt_func=learn.opt_func, wd=learn.wd, moms=learn.moms, path=learn.path,
                   model_dir=learn.model_dir, cbs=clip)
    configure_progress(feat)
    return feat


def head_rate(lr):
    "The head's learning rate of a stage's fastai rate (a slice's top)."
    return lr.stop if isinstance(lr, slice) else lr


def fit_head_on_features(learn, stage, suggestion=None, cbs=None, start_epoch=0, before_fit=None, bs=None):
    """fit_stage for a head-only stage on frozen features: freeze, restore (resume), compute the features once,
    then fit_one_cycle of the head's tail on them (plans.fit_stage's arguments)."""
    if world_size() > 1: raise CxrError("frozen_features trains in one process; run without --distributed")
    if getattr(learn.dls.train, "wgts", None) is not None:
        raise CxrError("frozen_features does not sample by weight: drop --oversample/--balance-sources, or "
                       "--frozen-features false")
    apply_stage(learn, stage)
    if before_fit is not None: before_fit()
    feat = features_learner(learn, pooling_depth(learn.model[1]), bs or learn.dls.train.bs)
    feat.fit_one_cycle(stage["epochs"], head_rate(to_fastai_lr(stage["lr"], suggestion)), pct_start=stage["pct_start"],
                       div=stage["div"], cbs=cbs, start_epoch=start_epoch)
    return feat
