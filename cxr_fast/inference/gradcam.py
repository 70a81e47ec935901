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

from ..core.errors import CxrError
from ..models.ensemble import Ensemble


def model_body(model):
    "The body of a cxr_fast model (`nn.Sequential(body, head)`), else the model itself."
    if isinstance(model, nn.Sequential) and len(model) >= 2: return model[0]
    return model


def _pick(found):
    "From (module, output) pairs in finishing order: the last output larger than 1x1, else the last one."
    if not found: raise CxrError("Grad-CAM needs a convolutional body: no layer of this model gives a 4-D output")
    larger = [f for f in found if f[1].shape[-2] * f[1].shape[-1] > 1]
    return (larger or found)[-1]


@contextmanager
def _record_4d(modules):
    "Collect (module, output) for every 4-D output of `modules` while the context is open."
    found = []

    def record(module, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4: found.append((module, out))

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        yield found
    finally:
        for h in hooks: h.remove()


def default_layer(model, x):
    """The last module of the body with a 4-D (N, C, h, w) output larger than 1x1 (else the last 4-D one):
    the last conv block for torchvision and timm CNN bodies."""
    with _record_4d(model_body(model).modules()) as found, torch.no_grad(), _eval_mode(model):
        model(x[:1])
    return _pick(found)[0]


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
    layer: the module to explain (default: the body's last conv block, see `default_layer`; for an Ensemble, each
    member's, and the map is the mean of the members' maps for the ensemble's score)."""
    if x.dim() != 4: raise CxrError(f"Grad-CAM takes a batch (N, 3, H, W), got shape {tuple(x.shape)}")
    device = next(model.parameters()).device
    x = x.detach().clone().to(device)  # a fresh leaf, also when `x` was made under inference_mode
    members = [default_layer(m, x) for m in model.members] if layer is None and isinstance(model, Ensemble) else None
    modules = members or ([layer] if layer is not None else list(model_body(model).modules()))
    with _record_4d(modules) as found, torch.inference_mode(False), torch.enable_grad(), _eval_mode(model), _frozen(model):
        x.requires_grad_(True)  # the graph runs through the input, not through the parameters
        logits = model(x)
        if logits.dim() != 2: raise CxrError(f"Grad-CAM needs (N, classes) outputs, got shape {tuple(logits.shape)}")
        # one forward pass: the default layer is chosen from what it recorded; an ensemble's members' in their order
        acts = [out for _, out in found] if members else [_pick(found)[1]]
        score = logits.gather(1, _targets(target, logits)[:, None]).sum()
        grads = torch.autograd.grad(score, acts)
    with torch.no_grad():
        cams = [_cam(act, grad, x.shape[-2:]) for act, grad in zip(acts, grads)]
        cam = cams[0] if len(cams) == 1 else _unit_range(torch.stack(cams).mean(dim=0))
    return cam.detach().cpu().numpy().astype(np.float32)


def _cam(act, grad, size):
    "One layer's map: channels weighted by their global-average-pooled gradients, ReLU, at the input's size, in [0, 1]."
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    return _unit_range(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0])


def _unit_range(cam):
    "Each map (N, H, W) scaled to [0, 1] (a constant map: zeros)."
    lo = cam.flatten(1).min(dim=1).values[:, None, None]
    hi = cam.flatten(1).max(dim=1).values[:, None, None]
    return torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))


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
