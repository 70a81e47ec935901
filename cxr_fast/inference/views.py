"""Test-time augmentation views, the one definition for `predict --tta` (Predictor) and `train --tta` (evaluation's
TTAViews callback): mild zoom-ins and shifts of the model-size input, whose logits are averaged."""
import torch

# (zoom, dy, dx) = crop a 1/zoom window whose centre is shifted by (dy, dx) (fractions of the image side) and
# resize it back to the input size. Mild zoom-ins and shifts only: no flips (a chest X-ray has a side: the heart
# is on the left) and no rotations (they need padding).
TTA_VIEWS = (
    (1.0, 0.0, 0.0),       # the plain image
    (1.1, 0.0, 0.0),       # centre zoom-in 1.1x (training's max_zoom)
    (1.05, -0.025, -0.025),  # 1.05x zoom-ins shifted 2.5% towards each corner
    (1.05, -0.025, 0.025),
    (1.05, 0.025, -0.025),
    (1.05, 0.025, 0.025),
)


def tta_views(x, views=TTA_VIEWS):
    "The TTA views of a float batch (N, C, H, W): each a zoomed/shifted crop resized back (bilinear)."
    h, w = x.shape[-2:]
    out = []
    for zoom, dy, dx in views:
        if zoom == 1.0 and dy == 0 and dx == 0:
            out.append(x)
            continue
        ch, cw = round(h / zoom), round(w / zoom)
        top = min(max(round((h - ch) / 2 + dy * h), 0), h - ch)
        left = min(max(round((w - cw) / 2 + dx * w), 0), w - cw)
        crop = x[..., top:top + ch, left:left + cw]
        out.append(torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return out


def stack_views(x):
    "A batch's TTA views stacked along the batch dimension: (len(TTA_VIEWS) * N, C, H, W), one forward pass."
    return torch.cat(tta_views(x))


def mean_over_views(out, n):
    "Outputs of `n` images' views in stack_views order -> the mean over the views per image (n, ...), float32."
    out = out.float()
    return out.view(len(TTA_VIEWS), n, *out.shape[1:]).mean(0)
