"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

`gradcam(model, x, target)` returns one heatmap per image, in [0, 1], at the input's size;
`overlay(image, heat)` draws it in the jet colormap over the grayscale image.
Gradients are taken with `torch.autograd.grad` on the chosen layer's activation only: the
model's parameters get no `.grad`, their `requires_grad` flags and train/eval mode are restored.
"""
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import CxrError


def model_body(model):
    "The body of a cxr_fast model (`nn.Sequential(body, head)`), else the model itself."
    if isinstance(model, nn.Sequential) and len(model) >= 2: return model[0]
    return model


def default_layer(model, x):
    """The last module of the body with a 4-D (N, C, h, w) output larger than 1x1 (else the last 4-D one):
    the last conv block for torchvision and timm CNN bodies."""
    body = model_body(model)
    found = []  # (module, spatial size) in the order their forward passes finish

    def record(module, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4: found.append((module, out.shape[-2] * out.shape[-1]))

    hooks = [m.register_forward_hook(record) for m in body.modules()]
    try:
        with torch.no_grad(), _eval_mode(model): model(x[:1])
    finally:
        for h in hooks: h.remove()
    if not found: raise CxrError("Grad-CAM needs a convolutional body: no layer of this model gives a 4-D output")
    larger = [m for m, hw in found if hw > 1]
    return (larger or [m for m, _ in found])[-1]


@contextmanager
def _eval_mode(model):
    "Eval mode for the duration (batch norm running stats, no dropout), then the caller's mode back."
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def _frozen(model):
    "No parameter requires grad for the duration; every flag is restored afterwards."
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params: p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(params, flags): p.requires_grad_(f)


def _targets(target, logits):
    "One class index per image: the predicted class (None), the same class (int), or one each (list)."
    n, n_out = logits.shape
    if target is None: idx = logits.argmax(dim=1)
    elif isinstance(target, (int, np.integer)): idx = torch.full((n,), int(target), dtype=torch.long)
    else:
        idx = torch.as_tensor(list(target), dtype=torch.long)
        if idx.numel() != n: raise CxrError(f"Grad-CAM got {idx.numel()} targets for {n} images")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_out):
        raise CxrError(f"Grad-CAM target out of range: the model has {n_out} outputs")
    return idx.to(logits.device)


def gradcam(model, x, target=None, layer=None):
    """Grad-CAM heatmaps (N, H, W) in [0, 1] for a batch `x` (N, 3, H, W) as the model takes it (normalised).

    target: class index (int), one per image (list), or None for each image's predicted class.
    layer: the module to explain (default: the body's last conv block, see `default_layer`)."""
    if x.dim() != 4: raise CxrError(f"Grad-CAM takes a batch (N, 3, H, W), got shape {tuple(x.shape)}")
    device = next(model.parameters()).device
    x = x.detach().clone().to(device)  # a fresh leaf, also when `x` was made under inference_mode
    layer = layer if layer is not None else default_layer(model, x)
    store = {}
    hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    try:
        with torch.inference_mode(False), torch.enable_grad(), _eval_mode(model), _frozen(model):
            x.requires_grad_(True)  # the graph runs through the input, not through the parameters
            logits = model(x)
            if logits.dim() != 2: raise CxrError(f"Grad-CAM needs (N, classes) outputs, got shape {tuple(logits.shape)}")
            idx = _targets(target, logits)
            score = logits.gather(1, idx[:, None]).sum()
            act = store["act"]
            grad, = torch.autograd.grad(score, act)
    finally:
        hook.remove()
    with torch.no_grad():
        weights = grad.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients: one weight per channel
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(dim=1).values[:, None, None]
        hi = cam.flatten(1).max(dim=1).values[:, None, None]
        cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
    return cam.detach().cpu().numpy().astype(np.float32)


def jet(heat):
    "An (H, W) map in [0, 1] as (H, W, 3) uint8 RGB in matplotlib's jet colormap."
    from matplotlib import colormaps
    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image, heat, alpha=0.4):
    "The heatmap `heat` (H, W) in jet colours over `image` (made grayscale), blended with weight `alpha`; RGB."
    gray = image.convert("L")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (gray.height, gray.width):
        heat = np.asarray(Image.fromarray(heat).resize(gray.size, Image.BILINEAR))
    base = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=2)
    out = (1 - alpha) * base + alpha * jet(heat).astype(np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
