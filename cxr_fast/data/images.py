"""Read every image format the field uses into one form: 8-bit grayscale.

The decision, made once: an X-ray is a single-channel image. Every file (JPEG, PNG of any mode
and bit depth, DICOM) is decoded to 8-bit grayscale ('L'); models get it replicated to 3 channels
and normalised with ImageNet statistics, so ImageNet backbones and our own models see the same
input whatever the file's colour mode was (this also removes one way a model can tell sources apart).
"""
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import dicom_size, looks_like_dicom, read_dicom_image, scale_to_uint8
from ..core.errors import DataError

RASTER_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


def is_image_file(path):
    "True when the file name has a suffix cxr_fast can read."
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_dicom_file(path):
    "True for a `.dcm`-like name, a file with the DICM magic at byte 128, or a preamble-less file that parses as DICOM."
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES: return True
    return looks_like_dicom(path)


def to_grayscale(img):
    "Any PIL image -> 'L' 8-bit: 16-bit and float scaled by their range, alpha composited on black."
    if img.mode == "L": return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(scale_to_uint8(np.asarray(img)), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L")


MAX_PIXELS = 50_000_000  # larger images are refused from their header, before decoding (real chest X-rays: <= ~18 Mpx)
_limit = {"max_pixels": MAX_PIXELS}  # every reader's limit in this process (set_max_pixels: --max-pixels)


def set_max_pixels(n):
    "Set the largest image (width x height) every reader decodes in this process (predict's --max-pixels)."
    _limit["max_pixels"] = int(n)


def max_pixels():
    return _limit["max_pixels"]


def check_pixels(file, size):
    "DataError naming `file` when `size` (width, height) is over the limit: refused before anything is decoded."
    if size is None: return
    w, h = size
    if w * h > max_pixels():
        raise DataError(f"{file}: {w} x {h} pixels ({w * h / 1e6:.0f} megapixels) is over the limit of "
                        f"{max_pixels() / 1e6:g} megapixels, not decoded (a decompression bomb, or far beyond a chest "
                        f"X-ray); --max-pixels N raises the limit (predict, evaluate, table, audit, serve)")


def _open_raster(path, draft_size=None):
    with warnings.catch_warnings():  # Pillow's own warning: the limit above says it in one line instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError:  # over twice Pillow's MAX_IMAGE_PIXELS: it will not even open it
            raise DataError(f"{path}: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, not decoded (a "
                            f"decompression bomb?); the limit is {max_pixels() / 1e6:g} megapixels") from None
        with opened as img:
            check_pixels(path, img.size)
            if draft_size is not None and img.format == "JPEG": img.draft("L", draft_size)
            img.load()  # decode now: a truncated file fails here, with its path
            return to_grayscale(img)


def _decode(file, dicom, draft_size=None):
    "A DICOM or raster file (a path or an InMemoryFile) as 8-bit grayscale, or DataError naming it."
    if dicom:
        check_pixels(file, dicom_size(file))
        if isinstance(file, io.BytesIO): file.seek(0)
        return read_dicom_image(file)
    try:
        return _open_raster(file, draft_size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{file}: cannot decode image ({e}); re-download or remove the file") from None


def load_image(path, draft_size=None):
    """Decode `path` to an 8-bit grayscale PIL image, or raise `DataError` naming the file.

    `draft_size` lets JPEG decoding skip detail below that size (much faster for large files)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path}: a symbolic link that loops or points to nothing; fix or remove the link")
    if not path.is_file(): raise DataError(f"{path}: no such image file")
    dicom = is_dicom_file(path)
    if not dicom and path.suffix.lower() not in RASTER_SUFFIXES:
        raise DataError(f"{path}: unsupported image type {path.suffix!r}; "
                        f"use one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    return _decode(path, dicom, draft_size)


class InMemoryFile(io.BytesIO):
    """A file's bytes in memory (an upload) that Pillow and pydicom read like the file, and that messages name by
    the file's name (f"{file}"), not as a buffer."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = str(name)

    def __str__(self):
        return self.name


def load_image_bytes(data, name, dicom):
    """`load_image` for a file's bytes already in memory (an upload): the same decoding, DataError naming `name`.
    dicom: whether the bytes are a DICOM file (the caller has looked at them: the DICM marker, or the name)."""
    return _decode(InMemoryFile(data, name), dicom)


CENTRAL_FIELD = 0.7  # the central field: the middle 70% of an image's width and height (the lungs of a frontal CXR)


def central_box(width, height, field=CENTRAL_FIELD):
    "(left, top, right, bottom) of the central field of a width x height image: the one definition everywhere."
    mx, my = round(width * (1 - field) / 2), round(height * (1 - field) / 2)
    return mx, my, max(mx + 1, width - mx), max(my + 1, height - my)


def crop_field(img):
    "The central field alone, cropped (then resized like any image): a border-free view at full resolution."
    return img.crop(central_box(*img.size))


def blank_border(img):
    "The central field kept in place, everything outside it black: the model cannot read the border."
    out = Image.new("L", img.size, 0)
    box = central_box(*img.size)
    out.paste(img.crop(box), box[:2])
    return out


def blank_center(img):
    "The border only, the central field black: the audit's probe of what the border alone tells (not a mitigation)."
    out = img.copy()
    out.paste(0, central_box(*img.size))
    return out


def standardize(img):
    """Intensity standardised per image: the 1st..99th percentile of the gray levels stretched to 0..255 (clipped),
    so exposure and window differences between sites and devices stop meaning anything."""
    arr = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(arr, (1, 99))
    if hi - lo < 1: return img  # an almost constant image: nothing to stretch (the input guard flags it)
    return Image.fromarray(np.clip((arr - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8), mode="L")


PREPROCESS = {  # steps on the full-resolution grayscale image, before resizing, in training and predict alike
    "none": lambda img: img,
    "equalize": ImageOps.equalize,  # global histogram equalisation: evens out contrast between sources/devices
    "standardize": standardize,     # percentile stretch (1..99): the same intensity range for every image
    "crop-field": crop_field,       # the central field only (border suppression by cropping)
    "blank-border": blank_border,   # the central field in place, border black (border suppression by blanking)
    "blank-center": blank_center,   # the border only: the audit's probe
}


def preprocessing_steps(spec):
    "A preprocessing pipeline ('standardize+crop-field': steps joined by '+', applied in order) as a list of names."
    steps = [s.strip() for s in str(spec or "none").split("+") if s.strip() and s.strip() != "none"]
    unknown = [s for s in steps if s not in PREPROCESS]
    if unknown:
        raise DataError(f"unknown preprocessing {unknown[0]!r}; choose steps from: {', '.join(PREPROCESS)} "
                        f"(several joined by '+', e.g. standardize+crop-field)")
    return steps


def check_preprocessing(spec):
    "The pipeline's canonical text ('none' when empty), or a one-line error naming the unknown step."
    return "+".join(preprocessing_steps(spec)) or "none"


def preprocess(img, name="none"):
    "Apply a preprocessing pipeline (PREPROCESS steps joined by '+') to an 8-bit grayscale image."
    for step in preprocessing_steps(name):
        img = PREPROCESS[step](img)
    return img


def jpeg_roundtrip(img, quality):
    "The image passed through JPEG at `quality` (1-95), decoded again: the same compression path for every image."
    import io
    buf = io.BytesIO()
    img.convert("L").save(buf, format="JPEG", quality=int(quality))  # the gray plane: an X-ray has no colour
    buf.seek(0)
    with Image.open(buf) as out:
        out.load()
        return out.convert(img.mode) if out.mode != img.mode else out


def jpeg_range(value):
    "--jpeg-quality 'LO:HI' (or one number, or a pair) -> (lo, hi) within 1..95; None/'none'/false: no re-encoding."
    if value is None or value is False or str(value).strip().lower() in ("none", "off", "false", ""): return None
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).replace("..", ":").split(":")
    try:
        lo, hi = (int(float(parts[0])), int(float(parts[-1])))
    except (ValueError, IndexError):
        raise DataError(f"--jpeg-quality takes LO:HI (e.g. 30:95) or none, not {value!r}") from None
    if not 1 <= lo <= hi <= 95:
        raise DataError(f"--jpeg-quality {lo}:{hi}: need 1 <= LO <= HI <= 95")
    return lo, hi


def jpeg_eval_quality(jpeg_quality):
    "The fixed quality of valid, test and predict for a training range (lo, hi): its middle."
    lo, hi = jpeg_quality
    return (lo + hi) // 2


def to_rgb(img):
    "The 3-channel form models take: the grayscale plane replicated."
    return img.convert("RGB")


def dhash(img, hash_size=16):
    """Difference hash as `hash_size**2 / 8` bytes, for near-duplicate detection.

    16x16 (256 bits): on the real CoronaHack images exact copies differ by 0 bits and the closest
    distinct images by 7 or more; the 8x8 hash common elsewhere cannot tell chest X-rays apart."""
    small = np.asarray(to_grayscale(img).resize((hash_size + 1, hash_size), Image.BILINEAR), dtype=np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes()


def inspect_image(path, want_hash=False):
    "(problem, hash): problem is None for a readable image; hash is its dhash when asked for."
    return inspect_decoded(path, want_hash)[:2]


def inspect_decoded(path, want_hash=False, check=None):
    """(problem, hash, check's result): inspect_image, plus `check(path, decoded image)` run on the same decode
    (the table step's input guard); the result is None when the image cannot be read or there is no check."""
    try:
        img = load_image(path, draft_size=(128, 128))
    except DataError as e:
        return str(e), None, None
    except Exception as e:  # a decoder bug must not stop a whole table build
        return f"{path}: cannot decode image ({type(e).__name__}: {e})", None, None
    return None, (dhash(img) if want_hash else None), (check(path, img) if check is not None else None)
