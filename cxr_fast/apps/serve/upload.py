"""One upload -> one answer: what `serve` does with the bytes a browser sends. They are sniffed (format and size from
the bytes themselves, never from the name), refused with a one-line message naming the file when they are no image
this page reads or too large, decoded in memory as `predict` decodes a file (`images.load_image_bytes`) and handed
to the model's Predictor (`predict_image`); the answer carries the probabilities, the decision, the Grad-CAM
overlay and the input guard's warning. Nothing is written unless the operator asked to keep uploads.
"""
import base64
import hashlib
import io
import re
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ...core.errors import CxrError, DataError
from ...data.guards import safe_input_warnings
from ...data.dicom import dicom_size
from ...data.images import DICOM_SUFFIXES, MAX_PIXELS, InMemoryFile, load_image_bytes
from ...data.labels import positive_index
from ...inference.gradcam import overlay
from .card import DISCLAIMER

DISPLAY_SIZE = 384          # the longer side of the images shown on the page
RASTER_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}


class InputError(CxrError):
    "An upload the page answers with a message (HTTP 400/413)."

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def clean_filename(name):
    "The uploaded file's name for display only (never used as a path): its last part, printable, short."
    name = re.split(r"[\\/]", str(name or ""))[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name[:120] or "upload")


def sniff(data, filename):
    "(suffix, kind, (width, height) or None) from the bytes themselves; InputError when they are no image we read."
    if not data: raise InputError("the upload is empty (0 bytes): choose a PNG, JPEG or DICOM file")
    if len(data) >= 132 and data[128:132] == b"DICM": return ".dcm", "DICOM", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, size = img.format, img.size
    except Image.DecompressionBombError as e:  # Pillow refuses to even open it (over 2 x its MAX_IMAGE_PIXELS)
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise InputError(f"{clean_filename(filename)}: the image has {size} (a decompression bomb?); "
                         f"this page reads images of at most {MAX_PIXELS / 1e6:.0f} megapixels", status=413) from None
    except Exception:
        if Path(filename).suffix.lower() in DICOM_SUFFIXES: return ".dcm", "DICOM", None  # DICOM without preamble
        head = data[:64]
        text = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) == len(head)
        raise InputError(f"{clean_filename(filename)}: not an image this page reads"
                         f"{' (it looks like a text file)' if text else ''}; upload a PNG, JPEG, BMP, TIFF or DICOM file") from None
    if fmt not in RASTER_FORMATS:
        raise InputError(f"{clean_filename(filename)}: {fmt} images are not supported; upload a PNG, JPEG, BMP, TIFF or DICOM file")
    return RASTER_FORMATS[fmt], fmt, size


def check_pixels(size, filename, max_pixels):
    "InputError for an image larger than `max_pixels` (a decompression bomb, or beyond what a chest X-ray needs)."
    if size is None: return
    w, h = size
    if w * h > max_pixels:
        raise InputError(f"{clean_filename(filename)}: the image is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); "
                         f"this page reads images of at most {max_pixels / 1e6:.0f} megapixels", status=413)


def png_data_url(img, max_side=DISPLAY_SIZE):
    "A PIL image as a data: URL (PNG), scaled so its longer side is `max_side` (small ones are enlarged)."
    w, h = img.size
    scale = max_side / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def probability_rows(predictor, probs):
    "One dict per class: class, probability, its threshold (or None) and whether it is in the decision."
    t = predictor.thresholds_for(None)
    classes = predictor.classes
    rows = [{"class": c, "p": float(p), "threshold": None} for c, p in zip(classes, probs)]
    if predictor.multilabel:
        for r in rows: r["threshold"] = float(t[r["class"]])
    elif t is not None:
        rows[positive_index(classes)]["threshold"] = float(t)
    return rows


def decode_upload(data, filename, dicom):
    "The upload as 8-bit grayscale, decoded in memory as `predict` decodes a file; InputError naming the file."
    try:
        return load_image_bytes(data, filename, dicom)
    except DataError as e:
        raise InputError(str(e)) from None
    except Exception as e:  # a decoder bug: one answer, the file named
        raise InputError(f"{filename}: cannot read image ({type(e).__name__}: {e})") from None


def analyse(served, data, filename, max_pixels=MAX_PIXELS, keep_dir=None):
    """Predict one uploaded file with `served`: the answer as a JSON-able dict, or InputError with the message.

    The bytes are decoded in memory (nothing is written) and the image goes to the served Predictor's
    `predict_image`, the path `predict` takes for a file; with `keep_dir` (the operator's choice) a copy of the
    upload is kept there under a new name."""
    filename = clean_filename(filename)
    start = time.perf_counter()
    suffix, kind, size = sniff(data, filename)
    check_pixels(size, filename, max_pixels)
    dicom = kind == "DICOM"
    if dicom: check_pixels(dicom_size(InMemoryFile(data, filename)), filename, max_pixels)
    gray = decode_upload(data, filename, dicom)
    pred = served.predictor
    x_u8, probs, decision = pred.predict_image(gray)
    target = int(np.argmax(probs)) if pred.multilabel else pred.classes.index(decision)
    heat = pred.heatmaps(x_u8[None], target=[target])[0]
    warning = safe_input_warnings(InMemoryFile(data, filename), gray, dicom=dicom)  # predict's warning column
    size = gray.size
    shown = gray  # crop/pad: the map fits the model's view only, so that is what is shown
    if served.meta.get("resize_method", "squish") != "squish": shown = Image.fromarray(x_u8[0].numpy(), mode="L")
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    kept = keep_upload(keep_dir, data, suffix) if keep_dir else None
    return {"ok": True, "model_name": served.name, "filename": filename, "format": kind, "size": list(size or []),
            "pred": decision, "multilabel": pred.multilabel, "probs": probability_rows(pred, probs),
            "gradcam_class": pred.classes[target], "image": png_data_url(shown), "gradcam": png_data_url(overlay(shown, heat)),
            "warning": warning, "seconds": round(time.perf_counter() - start, 3), "kept": kept, "disclaimer": DISCLAIMER}


def keep_upload(keep_dir, data, suffix):
    "Save an upload under a name the server makes (time + content hash), never the browser's; returns the name."
    keep_dir = Path(keep_dir)
    keep_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    (keep_dir / name).write_bytes(data)
    return name
