"""Canonical table + task -> fastai DataBlock / DataLoaders."""
import os
import random

import numpy as np
from PIL import Image
from fastai.callback.data import weighted_dataloaders  # noqa: F401  (adds DataBlock.weighted_dataloaders)
from fastai.vision.all import (CategoryBlock, ColReader, DataBlock, ImageBlock, IndexSplitter, MultiCategoryBlock,
                               Normalize, PILImage, RandTransform, Resize, Transform, aug_transforms, imagenet_stats)
from fastcore.basics import fastuple

from .cache import make_cache
from ..core.errors import DataError
from .images import check_preprocessing, jpeg_eval_quality, jpeg_roundtrip, load_image, preprocess, to_rgb
from .resize import check_method, squish, target_hw
from .labels import classes_of, is_multilabel
from .table import validate_table
from ..core.jsonio import write_atomic

AUG_PRESETS = {
    "none": {},
    "cxr": dict(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_lighting=0.2, max_warp=0.0, p_affine=0.75),
    "cxr-flip": dict(do_flip=True, flip_vert=False, max_rotate=10.0, max_zoom=1.1, max_lighting=0.2, max_warp=0.0),
    "fastai": dict(),  # fastai's aug_transforms() defaults
}


class CxrImage(PILImage):
    "A PILImage decoded by cxr_fast: any format -> 8-bit grayscale -> 3 identical channels."

    @classmethod
    def create(cls, fn, **kwargs):
        "From a path (decoded by `images.load_image`) or an already decoded grayscale PIL image."
        if isinstance(fn, (str, os.PathLike)): return cls(to_rgb(load_image(fn)))
        if isinstance(fn, Image.Image): return cls(to_rgb(fn))
        return super().create(fn, **kwargs)


class SquishResize(Transform):
    "The DataBlock's squish: `resize.squish`, the function the cache and predict call (fastai's Resize does the same)."
    order = 1  # where fastai's Resize runs: on the decoded image, before ToTensor

    def __init__(self, size):
        h, w = target_hw(size)
        self.size, self.method = fastuple(w, h), "squish"  # (w, h), as fastai's Resize keeps it

    def encodes(self, img: PILImage): return type(img)(squish(img, (self.size[1], self.size[0])))


class JpegRecompress(RandTransform):
    """The same compression path for every image: each one re-encoded as JPEG after resizing, at a random quality in
    [lo, hi] in training (so JPEG artefacts, or their absence, stop meaning a class) and at the middle of that range
    in valid, test and predict (inference.Predictor does the same through images.jpeg_roundtrip)."""
    order, split_idx = 2, None  # after the resize (order 1), before ToTensor; both splits, each its own way

    def __init__(self, quality_range):
        super().__init__()
        self.lo, self.hi = quality_range
        self.quality = self.eval_quality = jpeg_eval_quality(quality_range)

    def before_call(self, b, split_idx):
        self.do = True
        self.quality = random.randint(self.lo, self.hi) if split_idx == 0 else self.eval_quality

    def encodes(self, img: PILImage): return type(img)(jpeg_roundtrip(img, self.quality))


def item_resize(size, method="squish"):
    "The item transform that resizes: SquishResize, or fastai's Resize for pad/crop (random crop position in training)."
    if check_method(method) == "squish": return SquishResize(size)
    return Resize(size, method=method)


class ReadImage:
    "get_x: a row's path, or its decoded (preprocessed, and resized when cached) grayscale image."

    def __init__(self, cache=None, preprocessing="none"): self.cache, self.preprocessing = cache, preprocessing

    def __call__(self, row):
        path = row["path"] if not isinstance(row, (str, os.PathLike)) else row
        if self.cache is not None: return self.cache.get(path)
        return path if self.preprocessing == "none" else preprocess(load_image(path), self.preprocessing)


def aug_tfms(preset, size):
    "Batch augmentations for a named preset: chest X-rays get no vertical flips and small affine changes."
    if preset not in AUG_PRESETS:
        raise DataError(f"unknown augmentation preset {preset!r}; choose one of: {', '.join(AUG_PRESETS)}")
    if preset == "none": return []
    return aug_transforms(size=size, **AUG_PRESETS[preset])


def default_num_workers(cached=False):
    """Decoding workers: one per spare core for full decoding; none when images come from the cache
    (`make bench`: the cached data path ran at 389 img/s, augmentation included; on a 2-core machine a
    worker process only competes with the model's threads: 18.6 vs 14.7 img/s training fp32). Cores are
    the ones this process may use (machine.usable_cores: affinity and cgroup quota), not the host's."""
    if cached: return 0
    from ..core.machine import default_workers
    return default_workers(reserve=1)


def cxr_datablock(table, size=224, aug="cxr", resize_method="squish", cache=None, preprocessing="none",
                  jpeg_quality=None):
    """The DataBlock for a canonical table: CategoryBlock (fixed vocab) or MultiCategoryBlock(encoded=True).
    jpeg_quality: (lo, hi) to pass every image through JPEG after resizing (JpegRecompress); None: not."""
    classes = classes_of(table)
    if is_multilabel(table):
        y_block, get_y = MultiCategoryBlock(encoded=True, vocab=classes), ColReader(classes)
    else:
        y_block, get_y = CategoryBlock(vocab=classes, sort=False), ColReader("label")  # keep our order
    item_tfms = [item_resize(size, resize_method), *([JpegRecompress(jpeg_quality)] if jpeg_quality else [])]
    valid_idx = np.nonzero((table["split"] == "valid").to_numpy())[0]
    get_x = ReadImage(make_cache(cache, size, resize_method, preprocessing), preprocessing)
    return DataBlock(blocks=(ImageBlock(cls=CxrImage), y_block), get_x=get_x, get_y=get_y,
                     splitter=IndexSplitter(valid_idx), item_tfms=item_tfms,
                     batch_tfms=[*aug_tfms(aug, size), Normalize.from_stats(*imagenet_stats)])


def train_valid(table):
    "The train and valid rows, in that order, with a fresh index (what the DataBlock sees)."
    table = validate_table(table)
    part = table[table["split"].isin(["train", "valid"])].reset_index(drop=True)
    for split in ("train", "valid"):
        if not (part["split"] == split).any():
            raise DataError(f"the table has no {split} rows; build it with --valid-pct > 0")
    part.attrs = table.attrs
    return part


def get_dls(table, size=224, bs=32, aug="cxr", resize_method="squish", num_workers=None, seed=42,
            weights=None, cache=None, device=None, preprocessing="none", jpeg_quality=None):
    """DataLoaders (train, valid) for a canonical table.

    weights: per-train-row sampling weights for weighted oversampling (see training.sampling_weights).
    cache: True (default folder), a folder, or an ImageCache: decoded, resized images reused across
    epochs and runs (see cache.py); None decodes every image every epoch.
    preprocessing: a pipeline of images.PREPROCESS steps ('none', 'equalize', 'standardize+crop-field', ...) applied
    before resizing; jpeg_quality: (lo, hi) to re-encode every image as JPEG after resizing (JpegRecompress)."""
    part = train_valid(table)
    preprocessing = check_preprocessing(preprocessing)  # an unknown step fails here, before any decoding
    dblock = cxr_datablock(part, size, aug, resize_method, cache, preprocessing, jpeg_quality)
    num_workers = default_num_workers(cached=cache not in (None, False)) if num_workers is None else num_workers
    kwargs = dict(bs=bs, num_workers=num_workers, seed=seed, device=device)
    if weights is not None:
        is_train = (part["split"] == "train").to_numpy()
        if len(weights) != is_train.sum():
            raise DataError(f"{len(weights)} sampling weights for {is_train.sum()} train rows")
        full = np.ones(len(part))
        full[is_train] = np.asarray(weights, dtype=float)  # fastai indexes the weights by the train split
        dls = dblock.weighted_dataloaders(part, wgts=full, **kwargs)
    else:
        dls = dblock.dataloaders(part, **kwargs)
    dls.table = part
    return dls


def test_dl(dls, table, with_labels=True):
    "A DataLoader over a table's rows (e.g. its test split) with the dls' item and batch transforms."
    table = table.reset_index(drop=True)
    return dls.test_dl(table, with_labels=with_labels)  # rows, as the DataBlock's get_x reads them


test_dl.__test__ = False  # not a pytest test, despite its name


def save_show_batch(dls, out_png, max_n=16):
    "Save `dls.show_batch()` as a PNG (what the `table --show-batch` command writes)."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dls.show_batch(max_n=max_n, figsize=(10, 10))
    write_atomic(out_png, lambda p: plt.savefig(p, format="png", bbox_inches="tight", dpi=80))
    plt.close("all")
    return out_png
