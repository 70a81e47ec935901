"""Decoding for prediction: a file (or an image already decoded) to the uint8 model-size input, exactly as training's
valid-time path makes it (`images.load_image` -> preprocessing -> fastai's valid-time Resize -> the JPEG round trip of
a model trained with --jpeg-quality), on the grayscale plane; and batches of files decoded by a thread pool that
stays `prefetch` batches ahead of the model (Pillow releases the GIL while decoding and resizing; threads rather
than DataLoader processes, so it works the same in notebooks and on any OS, with no pickling)."""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..core.errors import DataError, ModelFormatError
from ..core.machine import default_workers
from ..data.guards import safe_input_warnings
from ..data.images import jpeg_eval_quality, jpeg_roundtrip, load_image, preprocess
from ..data.resize import RESIZE_METHODS, resizer


def make_resizer(img_size, resize_method="squish"):
    "The valid-time resize of training (resize.resizer) for a model.json's size and method."
    if resize_method not in RESIZE_METHODS:
        raise ModelFormatError(f"unknown resize_method {resize_method!r} in model.json; "
                               f"one of {', '.join(RESIZE_METHODS)}")
    return resizer(img_size, resize_method)


class ImageDecoder:
    "A model's input pipeline (model.json's img_size, resize_method, preprocessing, jpeg_quality) up to uint8 pixels."

    def __init__(self, meta):
        self.resize = make_resizer(meta["img_size"], meta.get("resize_method", "squish"))
        self.preprocessing = meta.get("preprocessing", "none")  # as in training: before resizing
        jpeg = meta.get("jpeg_quality")  # training's compression path: every image through JPEG after resizing
        self.jpeg_quality = jpeg_eval_quality(jpeg) if jpeg else None

    def prepare(self, gray):
        "A decoded 8-bit grayscale image -> the uint8 tensor (1, H, W) the model sees (before normalising)."
        img = self.resize(preprocess(gray, self.preprocessing))
        if self.jpeg_quality is not None: img = jpeg_roundtrip(img, self.jpeg_quality)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0)

    def decode(self, path, warn=True):
        "(uint8 tensor (1, H, W) or the error message, the input guard's warnings ('' when none or not asked for))."
        try:
            gray = load_image(path)
            x = self.prepare(gray)
        except DataError as e:
            return str(e), ""
        except Exception as e:  # a decoder bug must not stop the other images
            return f"{path}: cannot read image ({type(e).__name__}: {e})", ""
        return x, (safe_input_warnings(path, gray) if warn else "")

    def batches(self, paths, batch_size=32, workers=None, prefetch=2, warn=False):
        """Yield lists of (index, uint8 tensor or error str, warnings str), decoded by `workers` threads (None:
        machine.default_workers) `prefetch` batches ahead; warn: run the input guard on each file too."""
        workers = default_workers() if workers is None else int(workers)
        if workers == 0:
            for start in range(0, len(paths), batch_size):
                yield [(i, *self.decode(paths[i], warn)) for i in range(start, min(start + batch_size, len(paths)))]
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="cxr-decode") as pool:
            pending, todo = deque(), iter(range(len(paths)))

            def fill():
                while len(pending) < batch_size * (prefetch + 1):
                    i = next(todo, None)
                    if i is None: return
                    pending.append((i, pool.submit(self.decode, paths[i], warn)))

            fill()
            while pending:
                batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                fill()
                yield [(i, *f.result()) for i, f in batch]
