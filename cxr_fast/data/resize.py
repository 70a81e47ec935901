"""The one resize of training, the image cache and predict, so that they cannot drift apart.

It is fastai's `Resize(size, method)` at valid time: `squish` resizes the whole image (bilinear), `crop`
takes the centred crop of the target's aspect ratio, `pad` pads (reflection) to it, then both resize.
The DataBlock squishes with `squish` itself (blocks.SquishResize); for crop and pad it uses fastai's
`Resize`, whose valid-time path `resizer` calls too (in training, crop picks a random position).
"""
from PIL import Image

from ..core.errors import DataError

RESIZE_METHODS = ("squish", "pad", "crop")  # the values of fastai's ResizeMethod


def check_method(method):
    "The resize method's name, or an error listing the valid ones."
    if method not in RESIZE_METHODS:
        raise DataError(f"unknown resize method {method!r}; choose one of: {', '.join(RESIZE_METHODS)}")
    return method


def target_hw(size):
    "(height, width) of an image size given as an int or (h, w)."
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def squish(img, size):
    "fastai's Resize(method='squish'): crop_pad to the whole image (a no-op), then a bilinear resize."
    h, w = target_hw(size)
    return img.resize((w, h), Image.BILINEAR)


def shrink_short_side(img, size):
    "Shrink (never enlarge) keeping the aspect ratio so the short side is `size`: what the cache stores for pad/crop."
    w, h = img.size
    scale = size / min(w, h)
    if scale >= 1: return img
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def resizer(size, method="squish"):
    "The valid-time resize as a function of a PIL image (what predict applies; the DataBlock's valid path)."
    check_method(method)
    if method == "squish": return lambda img: squish(img, size)
    from fastai.vision.augment import Resize  # fastai only for pad/crop, so `predict` of a squish model starts fast
    from fastai.vision.core import PILImage
    tfm = Resize(target_hw(size), method=method)
    # split_idx=1: the valid-time (centred, deterministic) crop/pad; PILImage: fastai keeps the input's type
    return lambda img: tfm(PILImage(img), split_idx=1)

