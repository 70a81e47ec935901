"""Losses as fastai `BaseLoss` subclasses (with `activation` and `decodes`), and the loss a task gets.

    FocalLoss            single-label, softmax:  alpha * (1 - p_t)**gamma * CE        (decodes: argmax)
    FocalLossMultiLabel  multi-label, sigmoid:   alpha * (1 - p_t)**gamma * BCE       (decodes: p > thresh)

`alpha` is a plain scalar factor (alpha=1, gamma=2 was the best reported setting), not RetinaNet's
per-class alpha_t, so gamma=0 with alpha=1 is exactly cross-entropy / BCE-with-logits.

Why not fastai's `FocalLossFlat`: it is single-label only (no sigmoid form for multi-label tasks), has no
`alpha`, and with class weights it takes p_t from the *weighted* cross-entropy and averages over items;
`FocalLoss` here takes p_t from the softmax itself and, with class weights, divides by their sum as
`nn.CrossEntropyLoss` does, so `FocalLoss(gamma=0, weight=w)` equals `CrossEntropyLossFlat(weight=w)`.
Without class weights and with alpha=1 the two agree.
"""
import torch
import torch.nn.functional as F
from fastai.losses import BaseLoss, BCEWithLogitsLossFlat, CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from torch import nn

from ..core.errors import CxrError

LOSSES = ("auto", "ce", "bce", "focal")  # auto: ce for single-label tasks, bce for multi-label tasks


class SoftmaxFocal(nn.Module):
    "Focal loss on logits (N, C) and class indices (N,): alpha * (1 - p_t)**gamma * CE."
    def __init__(self, alpha=1.0, gamma=2.0, weight=None, reduction="mean"):
        super().__init__()
        self.alpha, self.gamma, self.reduction = float(alpha), float(gamma), reduction
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float))

    def forward(self, inp, targ):
        "Per-item focal terms, reduced; class weights scale CE and, like nn.CrossEntropyLoss, the mean."
        targ = targ.long()
        log_pt = F.log_softmax(inp.float(), dim=-1).gather(-1, targ.unsqueeze(-1)).squeeze(-1)
        w = torch.ones_like(log_pt) if self.weight is None else self.weight[targ]
        loss = self.alpha * (1 - log_pt.exp()) ** self.gamma * -log_pt * w
        return loss.sum() / w.sum() if self.reduction == "mean" else reduce_loss(loss, self.reduction)


class SigmoidFocal(nn.Module):
    "Focal loss on logits and 0/1 targets of the same shape: alpha * (1 - p_t)**gamma * BCE, per element."
    def __init__(self, alpha=1.0, gamma=2.0, reduction="mean"):
        super().__init__()
        self.alpha, self.gamma, self.reduction = float(alpha), float(gamma), reduction

    def forward(self, inp, targ):
        "Per-element focal terms, reduced."
        bce = F.binary_cross_entropy_with_logits(inp.float(), targ.float(), reduction="none")
        return reduce_loss(self.alpha * (1 - torch.exp(-bce)) ** self.gamma * bce, self.reduction)


def reduce_loss(loss, reduction):
    "Apply a PyTorch reduction name ('mean', 'sum', 'none')."
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


class FocalLoss(BaseLoss):
    "Focal loss for single-label tasks (softmax), flattened like fastai's CrossEntropyLossFlat."
    y_int = True

    def __init__(self, *args, alpha=1.0, gamma=2.0, weight=None, reduction="mean", axis=-1, **kwargs):
        super().__init__(SoftmaxFocal, *args, alpha=alpha, gamma=gamma, weight=weight, reduction=reduction,
                         axis=axis, **kwargs)

    def activation(self, x):
        "Class probabilities."
        return F.softmax(x, dim=self.axis)

    def decodes(self, x):
        "The predicted class index."
        return x.argmax(dim=self.axis)


class FocalLossMultiLabel(BaseLoss):
    "Focal loss for multi-label tasks (sigmoid per class), flattened like fastai's BCEWithLogitsLossFlat."
    def __init__(self, *args, alpha=1.0, gamma=2.0, reduction="mean", axis=-1, thresh=0.5, **kwargs):
        super().__init__(SigmoidFocal, *args, alpha=alpha, gamma=gamma, reduction=reduction, axis=axis,
                         floatify=True, is_2d=False, **kwargs)
        self.thresh = thresh

    def activation(self, x):
        "Per-class probabilities."
        return torch.sigmoid(x)

    def decodes(self, x):
        "0/1 per class: probability above `thresh`."
        return x > self.thresh


def inverse_frequency_weights(counts):
    "Class weights inverse to class counts, normalised to mean 1 (absent classes get weight 0)."
    counts = torch.as_tensor([float(c) for c in counts])
    inv = torch.where(counts > 0, 1 / counts.clamp(min=1), torch.zeros_like(counts))
    return inv * (counts > 0).sum() / inv.sum()


def resolve_loss_name(loss, multilabel):
    "'auto' -> 'ce' or 'bce'; a single-label/multi-label mismatch is a one-line error."
    if loss not in LOSSES: raise CxrError(f"--loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if loss == "auto": return "bce" if multilabel else "ce"
    if loss == "ce" and multilabel:
        raise CxrError("--loss ce is for single-label tasks; use bce or focal for multi-label")
    if loss == "bce" and not multilabel:
        raise CxrError("--loss bce is for multi-label tasks; use ce or focal for single-label")
    return loss


def make_loss(loss="auto", multilabel=False, class_weights=None, label_smoothing=0.0, alpha=1.0, gamma=2.0):
    """The loss for a task: 'ce' (cross-entropy, optional label smoothing and class weights), 'bce'
    (multi-label BCE-with-logits), 'focal' (FocalLoss or FocalLossMultiLabel); 'auto' picks ce or bce.

    class_weights: per-class weights in vocabulary order (single-label only)."""
    name = resolve_loss_name(loss, multilabel)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)
    if label_smoothing and name != "ce": raise CxrError("--label-smoothing applies to --loss ce only")
    if weight is not None and multilabel: raise CxrError("--class-weights applies to single-label tasks only; "
                                                         "for multi-label imbalance try --loss focal or --oversample")
    if name == "focal":
        if multilabel: return FocalLossMultiLabel(alpha=alpha, gamma=gamma)
        return FocalLoss(alpha=alpha, gamma=gamma, weight=weight)
    if name == "bce": return BCEWithLogitsLossFlat()
    if label_smoothing: return LabelSmoothingCrossEntropyFlat(eps=float(label_smoothing), weight=weight)
    return CrossEntropyLossFlat(weight=weight)
