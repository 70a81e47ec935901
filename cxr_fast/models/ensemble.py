"""A deep ensemble (Lakshminarayanan et al. 2017): models trained alike from different seeds, their logits averaged.

`train --members N` trains the members (training/members.py); `Ensemble` holds them as one module, so evaluation,
predict, serve, the ONNX export and Grad-CAM (the mean of the members' maps) take it like a single model. model.json's
`members` says how many: `model_from_meta` builds the module back before model.pth's weights go into it.
"""
import torch
from torch import nn

from .registry import build_model


class Ensemble(nn.Module):
    "Members taking the same input; the output is the mean of their logits (temperature and softmax come after)."
    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def model_from_meta(meta):
    "The randomly initialised module that model.json describes: one model, or an Ensemble of `members` alike."
    def one(): return build_model(meta["arch"], meta["n_out"], meta["head"])
    n = int(meta.get("members") or 1)
    return Ensemble([one() for _ in range(n)]) if n > 1 else one()
