"""A guard on inputs: say when an image does not look like what a chest X-ray model was made for.

A warning never stops a prediction or drops a table row: `predict` writes it in its `warning` column
and the table step counts it (problem kind `input_warning`). What is flagged:

- DICOM (header tags, no pixels needed): a `Modality` other than CR, DX or DR (CT, MR, US, RTDOSE,
  NM, OT, ...); a `BodyPartExamined` that is not the chest, when the tag is present; a lateral
  `ViewPosition` (LL, RL, LATERAL); a colour `PhotometricInterpretation` (RGB, YBR, palette).
- Any image: strongly coloured content (Hasler and Suesstrunk's colourfulness of a 64 px thumbnail
  above COLOURFUL; an RGB file holding a gray X-ray scores 0), an extreme aspect ratio (long side over
  short side above MAX_ASPECT), or an almost constant image (the 1st to 99th percentile of its 8-bit
  gray values spans under MIN_RANGE levels).

The thresholds sit outside what the real chest X-rays here show (bench/guard_stats.py on the 6,791
images of ../shared/data coronahack + darkcovidnet: colourfulness at most 17.2 (a few tinted COVID-19
images; 99% score 0), aspect ratio at most 1.68, percentile range at least 84; none flagged), and every one
of the 89 pydicom test files that decodes as an image (CT, MR, US, NM, RT dose, SEG, secondary-capture
colour, a cervical-spine CR) gets at least one warning.
"""
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from .dicom import dicom_header
from .images import is_dicom_file, load_image

XRAY_MODALITIES = {"CR", "DX", "DR"}
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "THORAC", "TORAC", "LUNG", "PECHO", "TORACE", "BRUST", "POITRINE")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
MONOCHROME = {"MONOCHROME1", "MONOCHROME2", ""}
COLOURFUL = 30.0    # colourfulness (0 for gray; Hasler: ~15 slightly, ~33 moderately, ~45+ clearly colourful)
MAX_ASPECT = 2.5    # long side / short side
MIN_RANGE = 16      # 99th - 1st percentile of the 8-bit gray values
THUMB = 64          # side of the thumbnail the pixel checks run on


def _plain(text):
    "Upper case without accents (TÓRAX -> TORAX), stripped."
    text = unicodedata.normalize("NFKD", str(text or ""))
    return "".join(ch for ch in text if not unicodedata.combining(ch)).strip().upper()


def is_chest(body_part):
    "True when a BodyPartExamined value names the chest (CHEST, THORAX, TORAX, PORT CHEST, LUNG, ...)."
    part = _plain(body_part)
    return any(word in part for word in CHEST_WORDS)


def is_lateral(view_position):
    "True for a lateral ViewPosition (LL, RL, LATERAL)."
    view = _plain(view_position)
    return view in LATERAL_VIEWS or view.startswith("LAT")


def dicom_tag_warnings(tags):
    "Warnings from DICOM header values ({keyword: str}, as `dicom.dicom_header` gives them)."
    out = []
    modality = _plain(tags.get("Modality"))
    if modality and modality not in XRAY_MODALITIES:
        out.append(f"DICOM Modality {modality} is not a radiograph (CR, DX or DR)")
    part = str(tags.get("BodyPartExamined") or "").strip()
    if part and not is_chest(part): out.append(f"DICOM BodyPartExamined {part} is not the chest")
    view = str(tags.get("ViewPosition") or "").strip()
    if view and is_lateral(view): out.append(f"DICOM ViewPosition {view} is a lateral view, not frontal (PA/AP)")
    photometric = _plain(tags.get("PhotometricInterpretation"))
    if photometric not in MONOCHROME:
        out.append(f"DICOM PhotometricInterpretation {photometric} is a colour image, not an X-ray")
    rows, cols = _int(tags.get("Rows")), _int(tags.get("Columns"))
    if rows and cols: out += shape_warnings(cols, rows)
    return out


def _int(value):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def shape_warnings(width, height):
    "A warning for an extreme aspect ratio."
    ratio = max(width, height) / max(1, min(width, height))
    return [f"extreme aspect ratio {width}x{height} ({ratio:.1f}:1)"] if ratio > MAX_ASPECT else []


def colourfulness(rgb):
    "Hasler and Suesstrunk's colourfulness of an RGB array (H, W, 3): 0 for any gray image."
    r, g, b = (np.asarray(rgb, dtype=np.float64)[..., i] for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def gray_range(gray):
    "The 1st to 99th percentile span of an 8-bit gray array (or image)."
    lo, hi = np.percentile(np.asarray(gray, dtype=np.float32), [1, 99])
    return float(hi - lo)


def pixel_warnings(gray):
    "A warning for an almost constant 8-bit grayscale image (PIL 'L' image or array)."
    if isinstance(gray, Image.Image):
        gray = gray.copy()
        gray.thumbnail((THUMB, THUMB))
    span = gray_range(gray)
    return [f"almost constant image (gray levels span {span:.0f} of 255)"] if span < MIN_RANGE else []


def raster_colour_warnings(img):
    "A warning for a strongly coloured PIL image (any mode; gray modes are never coloured)."
    if img.mode in GRAY_MODES: return []
    thumb = img.convert("RGB")
    thumb.thumbnail((THUMB, THUMB))
    score = colourfulness(np.asarray(thumb))
    return [f"strongly coloured image (colourfulness {score:.0f}; an X-ray is gray)"] if score > COLOURFUL else []


GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1")


def raster_warnings(path):
    "Warnings from a JPEG/PNG/...'s size (header) and colour (pixels decoded only for a colour mode; JPEG as a draft)."
    with Image.open(path) as img:
        out = shape_warnings(*img.size)
        if img.mode in GRAY_MODES: return out
        if img.format == "JPEG": img.draft("RGB", (THUMB * 2, THUMB * 2))
        img.load()
        out += raster_colour_warnings(img)
    return out


def input_warnings(path, gray=None, dicom=None):
    """The warnings of one input file (a list of strings, empty when it looks like a chest X-ray).

    gray: the file's decoded 8-bit grayscale image when the caller has it (else it is decoded here); dicom: whether
    the file is DICOM, when the caller knows (then `path` may be an images.InMemoryFile: an upload's bytes)."""
    if dicom is None: path, dicom = Path(path), is_dicom_file(path)
    if dicom:
        out = dicom_tag_warnings(dicom_header(path))
    else:
        out = raster_warnings(path)
    return out + pixel_warnings(gray if gray is not None else load_image(path, draft_size=(THUMB * 2, THUMB * 2)))


def safe_input_warnings(path, gray=None, dicom=None):
    "input_warnings joined by '; ' ('' when none), never raising (a file that cannot be read gets its error elsewhere)."
    try:
        return "; ".join(input_warnings(path, gray, dicom))
    except Exception:  # the reading error, if any, is reported by whoever reads the file
        return ""


def warning_problems(paths, warnings):
    "Table problems (as rows.problem makes them) of kind `input_warning`, rows kept, for the paths with a warning."
    return [{"kind": "input_warning", "path": str(p), "detail": w} for p, w in zip(paths, warnings) if w]
