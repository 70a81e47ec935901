"""Logits to probabilities, the one definition: sigmoid per label (multi-label) or softmax over classes.

Evaluation, calibration, predict and the ONNX check all mean this: a torch tensor comes back a tensor of its
dtype and device; anything else (numpy, lists) comes back a float64 numpy array, as temperature fitting needs.
"""
import numpy as np
import torch


def activate(logits, multilabel):
    "Probabilities of logits (N, C): sigmoid per label when `multilabel`, else softmax over the classes (dim 1)."
    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits, dtype=np.float64))
    probs = torch.sigmoid(t) if multilabel else torch.softmax(t, dim=1)
    return probs if isinstance(logits, torch.Tensor) else probs.numpy()
