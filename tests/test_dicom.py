"""DICOM reading: windowing, MONOCHROME1, bit depth, compressed syntaxes, and clear errors."""
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxr_fast.data.dicom import dicom_header, read_dicom_array, read_dicom_image, write_dicom
from cxr_fast.core.errors import DataError
from cxr_fast.data.images import load_image

DATA = Path(__file__).parents[2] / "shared" / "data"
REAL_DICOM = DATA / "dicom" / "nih_chestxray14_no_finding.dcm"
CORNERS = np.array([[0, 100], [200, 255]], dtype=np.uint8)


def pixels(path):
    "What a user sees: the 8-bit image as an array."
    img = read_dicom_image(path)
    assert img.mode == "L"
    return np.asarray(img)


def ramp12():
    "A 64x64 12-bit ramp 0..4095."
    return np.linspace(0, 4095, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def test_monochrome2_kept_and_monochrome1_inverted(tmp_path):
    m2 = write_dicom(tmp_path / "m2.dcm", CORNERS)
    m1 = write_dicom(tmp_path / "m1.dcm", CORNERS, photometric="MONOCHROME1")
    assert pixels(m2).tolist() == [[0, 100], [200, 255]]
    assert pixels(m1).tolist() == [[255, 155], [55, 0]]
    assert read_dicom_array(m1, apply_voi=False).tolist() == [[0, 100], [200, 255]]  # raw path: not inverted


def test_window_center_width_clips_outside_window(tmp_path):
    raw = ramp12()
    path = write_dicom(tmp_path / "w.dcm", raw, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    img = pixels(path)
    assert (img[raw <= 1530] == 0).all() and (img[raw >= 2566] == 255).all()
    inside = (raw > 1600) & (raw < 2500)
    assert 1 <= img[inside].min() and img[inside].max() <= 254
    centre = np.abs(raw.astype(int) - 2048).argmin()
    assert abs(int(img.flat[centre]) - 128) <= 2
    assert np.all(np.diff(img.flatten().astype(int)) >= 0)  # monotonic, as the ramp


def test_voi_lut_sequence_applied_before_window(tmp_path):
    lut = np.clip((np.arange(256) - 64) * 8, 0, 1023).astype("<u2")  # a real VOI LUT: 256 entries, 16-bit
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = lut.tobytes()
    path = write_dicom(tmp_path / "lut.dcm", CORNERS, VOILUTSequence=Sequence([item]),
                       WindowCenter=100, WindowWidth=10)  # the LUT wins over the window
    assert read_dicom_array(path).tolist() == [[0, 288], [1023, 1023]]
    assert pixels(path).tolist() == [[0, 72], [255, 255]]


def test_raw_array_path_applies_modality_lut_only(tmp_path):
    raw = (np.arange(16, dtype=np.uint16) * 100).reshape(4, 4)
    path = write_dicom(tmp_path / "r.dcm", raw, photometric="MONOCHROME1", RescaleSlope=2,
                       RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1000)
    arr = read_dicom_array(path, apply_voi=False)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, raw * 2.0 - 1024)
    img = pixels(path)  # windowed on -500..500 HU-like values, then inverted: low values bright
    assert img[0, 0] == 255 and img[3, 3] == 0 and img[1, 1] == 133


def test_16bit_scaled_to_full_range(tmp_path):
    raw = np.linspace(1000, 40000, 32 * 32).astype(np.uint16).reshape(32, 32)
    img = pixels(write_dicom(tmp_path / "16.dcm", raw))
    assert img.min() == 0 and img.max() == 255
    assert np.all(np.diff(img.flatten().astype(int)) >= 0)
    assert abs(int(img.flat[len(img.flat) // 2]) - 128) <= 2


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_syntax_round_trip(tmp_path, syntax):
    raw = ramp12()
    try:
        path = write_dicom(tmp_path / "c.dcm", raw, bits_stored=12, syntax=syntax)
    except RuntimeError as e:
        pytest.skip(f"no encoder for {syntax.name}: {e}")
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_dicom_array(path), raw)
    img = load_image(path)  # the generic entry point dispatches .dcm here
    assert img.mode == "L" and img.size == (64, 64) and np.asarray(img).max() == 255


def test_dicm_magic_without_suffix_is_read(tmp_path):
    path = write_dicom(tmp_path / "image.dcm", CORNERS).rename(tmp_path / "image.bin")
    assert np.asarray(load_image(path)).tolist() == [[0, 100], [200, 255]]


def test_multiframe_reads_first_frame(tmp_path):
    frames = np.stack([np.full((4, 4), 50 * i, np.uint8) for i in range(3)])
    frames[0, 0, 0] = 10
    arr = read_dicom_array(write_dicom(tmp_path / "mf.dcm", frames))
    assert arr.shape == (4, 4) and arr[0, 0] == 10 and arr.sum() == 10


def test_truncated_compressed_file_names_path_and_syntax(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", ramp12(), bits_stored=12, syntax=RLELossless)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 2000])
    with pytest.warns(UserWarning), pytest.raises(DataError) as err:
        read_dicom_image(path)
    assert str(path) in str(err.value) and "RLE Lossless" in str(err.value)


def test_corrupt_pixel_data_names_path_and_syntax(tmp_path):
    path = write_dicom(tmp_path / "bad.dcm", ramp12(), bits_stored=12, syntax=RLELossless)
    data = bytearray(path.read_bytes())
    frame = data.find(b"\xfe\xff\x00\xe0", data.find(b"\xfe\xff\x00\xe0", data.find(b"\xe0\x7f\x10\x00")) + 8)
    data[frame + 8:frame + 16] = b"\xff" * 8  # RLE header: an impossible number of segments
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_image(path)
    msg = str(err.value)
    assert str(path) in msg and "RLE Lossless (1.2.840.10008.1.2.5)" in msg and "\n" not in msg


def test_undecodable_syntax_names_path_and_syntax(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "src.dcm", CORNERS))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no decoder in pydicom
    ds.PixelData = encapsulate([b"\0" * 16])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path)
    with pytest.raises(DataError, match="MPEG2 Main Profile / Main Level") as err:
        read_dicom_image(path)
    assert str(path) in str(err.value)


def test_not_a_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image")
    with pytest.raises(DataError, match="not a DICOM file") as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_header_reads_patient_and_view(tmp_path):
    path = write_dicom(tmp_path / "h.dcm", CORNERS, PatientID="P-17", ViewPosition="PA")
    head = dicom_header(path)
    assert head["PatientID"] == "P-17" and head["ViewPosition"] == "PA" and head["Modality"] == "DX"
    assert dicom_header(write_dicom(tmp_path / "n.dcm", CORNERS))["PatientID"] == ""


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data/dicom not present")
def test_real_nih_dicom_full_read_path():
    head = dicom_header(REAL_DICOM)
    assert head["PhotometricInterpretation"] == "MONOCHROME2" and head["PatientID"] == "Covid0000"
    assert pydicom.dcmread(REAL_DICOM, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    raw = read_dicom_array(REAL_DICOM, apply_voi=False)
    assert raw.shape == (1024, 1024) and raw.min() == 0 and raw.max() == 252  # 8-bit stored, no LUTs
    img = load_image(REAL_DICOM)
    arr = np.asarray(img)
    assert img.mode == "L" and img.size == (1024, 1024) and arr.min() == 0 and arr.max() == 255
    # not inverted: the mediastinum (centre) is brighter than the lung fields either side of it
    mid_rows = arr[300:600]
    assert mid_rows[:, 480:544].mean() > mid_rows[:, 250:350].mean() + 30
    assert mid_rows[:, 480:544].mean() > mid_rows[:, 674:774].mean() + 30
