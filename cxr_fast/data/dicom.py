"""Read DICOM chest X-rays: decode any transfer syntax we have a decoder for, then window and scale.

Two paths:
- `read_dicom_image(path)`: what a model (and a person) sees, 8-bit grayscale: modality LUT, VOI LUT
  or window centre/width when the file has one, MONOCHROME1 inverted (bone bright), scaled to 0..255
  by the image's own range.
- `read_dicom_array(path, apply_voi=False)`: the raw path for your own windowing: float32 values after
  the modality LUT (rescale slope/intercept) only, photometric interpretation untouched.

Older files without the 128-byte preamble and `DICM` marker (ACR-NEMA style, or written by tools that
skip the file meta) are read too, when they parse as DICOM: `read_dataset` retries with pydicom's
`force=True`, accepts the result only when it holds real DICOM elements (`parses_as_dicom`), and fills in
the transfer syntax from the encoding pydicom found.

Compressed transfer syntaxes (JPEG, JPEG lossless, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's
plugins (`pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg`); a file that cannot be decoded
raises `DataError` naming the file, its transfer syntax and what to do.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError


def scale_to_uint8(arr):
    "Linearly map an array's own min..max onto 0..255 (a constant image becomes 0)."
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo: return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


DECODER_HINT = "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"
HEADER_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ViewPosition",
               "PhotometricInterpretation", "Modality", "BodyPartExamined", "Rows", "Columns")
# groups a real dataset's elements come from (identification, patient, acquisition, relationship, image, pixels)
STANDARD_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x7FE0}
FRONTAL_VIEWS = {"PA", "AP"}


def read_dataset(path, header_only=False, specific_tags=None):
    "The parsed DICOM dataset (pixel data not decoded yet), or DataError naming the file."
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only, specific_tags=specific_tags)
    except InvalidDicomError:
        ds = read_without_preamble(path, header_only, specific_tags)
        if ds is not None: return ds
        raise DataError(f"{path}: not a DICOM file (no DICM marker at byte 128, and it does not parse as DICOM "
                        f"without one); re-download it or remove it from the data") from None
    except Exception as e:  # truncated or garbled header: pydicom raises many kinds
        raise DataError(f"{path}: cannot read the DICOM header ({type(e).__name__}: {e}); "
                        f"re-download it or remove it from the data") from None


def parses_as_dicom(ds):
    "True when a dataset read with force=True holds real DICOM elements, not bytes of another file read as tags."
    try:
        tags = list(ds.keys())
        standard = [t for t in tags if t.group in STANDARD_GROUPS]
        return len(standard) >= 2 and tags == sorted(tags)
    except Exception:  # garbage that fails even to list its tags
        return False


def read_without_preamble(path, header_only=False, specific_tags=None):
    """A file without the 128-byte preamble and DICM marker, read with force=True: the dataset (its file meta
    given the transfer syntax pydicom found) when it parses as DICOM, else None."""
    import warnings

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's guesses about VR and encoding: the check below decides
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=header_only, specific_tags=specific_tags)
            if specific_tags is not None and not parses_as_dicom(ds):  # too few tags asked for to judge: look at all
                if not parses_as_dicom(pydicom.dcmread(path, force=True, stop_before_pixels=True)): return None
            elif not parses_as_dicom(ds): return None
    except Exception:
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def looks_like_dicom(path):
    """True for a file with the DICM marker at byte 128, or one that starts like a preamble-less DICOM
    dataset (a group 0002/0008 element, little or big endian) and parses as one."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM": return True
    if head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"): return False
    return read_without_preamble(path, header_only=True) is not None


def dicom_header(path):
    "{tag keyword: str} for PatientID, StudyInstanceUID, SeriesInstanceUID, ViewPosition, Modality, ...; '' where absent."
    ds = read_dataset(path, header_only=True, specific_tags=list(HEADER_TAGS))
    return {k: str(ds.get(k, "") or "").strip() for k in HEADER_TAGS}


def is_frontal(view_position):
    "True for a PA or AP view (the ViewPosition DICOM tag)."
    return str(view_position).strip().upper() in FRONTAL_VIEWS


def transfer_syntax(ds):
    "The dataset's transfer syntax UID, or None when the file meta has none."
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def describe_syntax(uid):
    "'JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)': a transfer syntax's name and UID."
    return f"{uid.name} ({uid})" if uid.name != str(uid) else f"unknown transfer syntax {uid}"


def decoder_problem(uid):
    "Why pixel data in transfer syntax `uid` cannot be decoded here (with what to do), or None."
    from pydicom.pixels import get_decoder
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):
        return (f"pydicom has no decoder for {describe_syntax(uid)}; convert the file to an uncompressed "
                f"syntax (e.g. `gdcmconv --raw` or dcmtk `dcmdjpeg`) or to PNG")
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no decoding plugin"
        return f"no decoder installed for {describe_syntax(uid)} ({missing}); {DECODER_HINT}"
    return None


def decode_first_frame(ds, path):
    "The stored values of the first frame (rows x cols, or rows x cols x 3 for colour), or DataError."
    from pydicom.pixels import pixel_array
    uid = transfer_syntax(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        syntax = describe_syntax(uid) if uid else "none given"
        raise DataError(f"{path}: no pixel data could be read (transfer syntax {syntax}): the file is truncated "
                        f"or damaged, or is not an image (a report); re-download it or remove it")
    if uid is None:
        raise DataError(f"{path}: DICOM file meta has no TransferSyntaxUID, so its pixel data cannot be "
                        f"decoded; rewrite it with a proper file meta header (e.g. dcmtk `dcmconv`)")
    why = decoder_problem(uid)
    if why: raise DataError(f"{path}: cannot decode pixel data: {why}")
    try:
        return pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None)
    except Exception as e:  # corrupt or truncated pixel data: every decoder fails its own way
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the plugins said
        hint = f" (if it is intact, update the decoders: {DECODER_HINT})" if uid.is_compressed else ""
        raise DataError(f"{path}: cannot decode pixel data with transfer syntax {describe_syntax(uid)} "
                        f"({reason}); the file may be corrupt or truncated: re-download it or remove it"
                        f"{hint}") from None


def to_gray(arr):
    "A colour (rows x cols x 3, RGB) frame -> luminance; a grayscale frame unchanged."
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return arr


def window(arr, ds):
    "Apply the file's VOI LUT sequence, else its first window centre/width; no VOI data: unchanged."
    from pydicom.pixels import apply_voi_lut
    if "VOILUTSequence" not in ds and "WindowCenter" not in ds: return arr
    return apply_voi_lut(arr, ds, index=0, prefer_lut=True)


def invert_monochrome1(arr, ds):
    "MONOCHROME1 stores bone dark: flip it within its own range so bone is bright, as in MONOCHROME2."
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1": return arr
    return (float(np.nanmax(arr)) + float(np.nanmin(arr))) - arr


def read_dicom_array(path, apply_voi=True):
    """The first frame as float32. apply_voi: modality LUT, VOI LUT/windowing and MONOCHROME1 inversion
    (display values, not yet scaled); False: the modality LUT only, for your own windowing."""
    from pydicom.pixels import apply_modality_lut
    ds = read_dataset(path)
    arr = decode_first_frame(ds, path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4): return to_gray(arr)  # colour: no LUTs apply
    try:
        arr = apply_modality_lut(arr, ds)
        if apply_voi: arr = invert_monochrome1(np.asarray(window(arr, ds), dtype=np.float32), ds)
    except Exception as e:  # a malformed LUT or window element
        raise DataError(f"{path}: cannot apply the DICOM modality/VOI LUT ({type(e).__name__}: {e}); "
                        f"fix the LUT elements or use read_dicom_array(path, apply_voi=False)") from None
    return np.asarray(arr, dtype=np.float32)


def read_dicom_image(path):
    """The first frame as an 8-bit grayscale PIL image: windowed, MONOCHROME1 inverted, scaled by its own range.
    path: a file path, or a file object (images.InMemoryFile: an upload's bytes)."""
    return Image.fromarray(scale_to_uint8(read_dicom_array(path, apply_voi=True)))  # uint8 2-D: mode L


def write_dicom(path, arr, photometric="MONOCHROME2", bits_stored=None, syntax=None, preamble=True, **elements):
    """Write a 2-D uint8/uint16/int16 array as a DX DICOM file (tests, demos, exports); returns the path.

    syntax: a compressed transfer syntax UID to encode with (e.g. pydicom.uid.RLELossless); preamble=False:
    an old-style file, the bare dataset without preamble, DICM marker or file meta (implicit VR little endian);
    elements: extra DICOM keywords (PatientID, ViewPosition, WindowCenter, RescaleSlope, Modality, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    arr = np.asarray(arr)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for keyword, value in elements.items(): setattr(ds, keyword, value)
    if syntax is not None: ds.compress(syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
        return path
    from pydicom.filewriter import dcmwrite
    del ds.file_meta
    ds.preamble = None
    dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def dicom_size(file):
    "(columns, rows) from a DICOM header (a path or a file object), or None when the header does not say."
    import pydicom
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Rows", "Columns"], force=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:
        return None  # the decoding step reports what is wrong with the file
