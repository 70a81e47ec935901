"""A disk cache of decoded, resized images: decode a full-size X-ray (PNG, JPEG, DICOM) once per size.

Entries are keyed by the file's content (SHA-1 of its bytes), the target size and the resize mode,
so an edited or replaced source file gets a new entry and copies share one. Entries are uint8 .npy
files written atomically (temporary file + rename), so two runs can share a cache folder safely.
Within a process, (path, size in bytes, mtime) -> content hash is remembered, so later epochs only stat.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import resize
from .images import load_image, preprocess
from ..core.jsonio import write_atomic

CACHE_VERSION = 1  # bump when the decoding in images.py changes what a cached entry holds


def default_cache_dir():
    "CXR_FAST_CACHE, else ~/.cache/cxr_fast/images."
    return Path(os.environ.get("CXR_FAST_CACHE", Path.home() / ".cache" / "cxr_fast" / "images"))


def file_digest(path, chunk=1 << 20):
    "SHA-1 of a file's bytes."
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""): h.update(block)
    return h.hexdigest()


def resize_for_cache(img, size, squish=True):
    "Squished to size x size (resize.squish, as the DataBlock and predict), or for pad/crop shrunk keeping the aspect."
    return resize.squish(img, size) if squish else resize.shrink_short_side(img, size)


class ImageCache:
    "Decoded + resized grayscale images on disk, keyed by content, size and resize mode."

    def __init__(self, root=None, size=224, squish=True, preprocessing="none"):
        self.root, self.size, self.squish = Path(root or default_cache_dir()), int(size), bool(squish)
        self.preprocessing = preprocessing
        self._digests = {}
        self.hits = self.misses = 0

    def key(self, path):
        "The entry name for `path` (content hash memoised per (path, size, mtime))."
        st = os.stat(path)
        memo = (str(path), st.st_size, st.st_mtime_ns)
        if memo not in self._digests: self._digests[memo] = file_digest(path)
        mode = ("sq" if self.squish else "ar") + ("" if self.preprocessing == "none" else f"-{self.preprocessing}")
        return f"v{CACHE_VERSION}-{self._digests[memo]}-{self.size}{mode}"

    def entry_path(self, key):
        return self.root / key[3:5] / f"{key}.npy"

    def get(self, path):
        "The cached image for `path`, decoding and storing it on a miss."
        entry = self.entry_path(self.key(path))
        try:
            arr = np.load(entry, allow_pickle=False)
            self.hits += 1
            return Image.fromarray(arr, mode="L")
        except (FileNotFoundError, ValueError, OSError, EOFError):
            pass  # absent, or a torn file from a killed writer: decode again
        self.misses += 1
        img = resize_for_cache(preprocess(load_image(path), self.preprocessing), self.size, self.squish)
        self._store(entry, np.asarray(img))
        return img

    def _store(self, entry, arr):
        try:
            write_atomic(entry, lambda p: _write_npy(p, arr))
        except OSError:
            pass  # a full or read-only cache must not stop training: the image is still returned


def _write_npy(path, arr):
    with open(path, "wb") as f: np.save(f, arr, allow_pickle=False)  # a handle: np.save(path) would add '.npy'


def make_cache(cache, size, resize_method="squish", preprocessing="none"):
    "None/False -> no cache; True -> the default folder; a path -> that folder; an ImageCache as is."
    if cache is None or cache is False: return None
    if isinstance(cache, ImageCache): return cache
    return ImageCache(None if cache is True else cache, size, squish=resize_method == "squish", preprocessing=preprocessing)
