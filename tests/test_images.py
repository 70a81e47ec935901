import numpy as np
import pytest
from PIL import Image

from conftest import save_16bit_png, save_corrupt_jpeg, save_gray, save_rgba_png, xray_like
from cxr_fast.core.errors import DataError
from cxr_fast.data.images import dhash, inspect_image, load_image, to_grayscale, to_rgb


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    img = load_image(save_16bit_png(tmp_path / "a.png"))
    arr = np.asarray(img)
    assert img.mode == "L" and arr.min() == 0 and arr.max() == 255
    # same picture as the 8-bit source, up to rounding (PIL's own convert('L') would clip it to white)
    src = xray_like(64).astype(float)
    expected = (src - src.min()) / (src.max() - src.min()) * 255
    assert np.abs(arr - expected).max() <= 1.0


def test_rgba_png_composited_on_black(tmp_path):
    arr = np.asarray(load_image(save_rgba_png(tmp_path / "a.png")))
    assert arr[:8, :8].max() == 0  # transparent corner
    assert np.array_equal(arr[8:, 8:], xray_like(64)[8:, 8:])


@pytest.mark.parametrize("mode", ["RGB", "P", "LA", "I", "F", "1"])
def test_every_pil_mode_becomes_8bit_grayscale(mode):
    img = Image.fromarray(xray_like(32)).convert(mode)
    out = to_grayscale(img)
    assert out.mode == "L" and out.size == (32, 32)


def test_rgb_is_grayscale_replicated_three_times(tmp_path):
    img = to_rgb(load_image(save_gray(tmp_path / "a.jpeg")))
    arr = np.asarray(img)
    assert img.mode == "RGB" and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_corrupt_jpeg_names_the_file(tmp_path):
    path = save_corrupt_jpeg(tmp_path / "half.jpeg")
    with pytest.raises(DataError, match="half.jpeg"):
        load_image(path)
    problem, _ = inspect_image(path)
    assert "half.jpeg" in problem and "cannot decode" in problem


def test_unsupported_and_text_files(tmp_path):
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"a\.gif: unsupported image type '\.gif'"):
        load_image(tmp_path / "a.gif")
    (tmp_path / "b.png").write_text("I am text")
    with pytest.raises(DataError, match="b.png: cannot decode"):
        load_image(tmp_path / "b.png")
    with pytest.raises(DataError, match="no such image file"):
        load_image(tmp_path / "none.png")


def test_dhash_near_duplicates_close_and_different_images_far():
    import io
    from cxr_fast.data.sources.phantom import _anatomy, draw_phantom
    rng = np.random.default_rng(0)
    a = Image.fromarray(draw_phantom("Pneumonia", _anatomy(rng), 256, rng))
    other = Image.fromarray(draw_phantom("Pneumonia", _anatomy(rng), 256, rng))
    buf = io.BytesIO()
    a.resize((180, 180)).save(buf, "JPEG", quality=80)  # a resized, re-encoded copy
    copy = Image.open(buf)
    bits = lambda x, y: int(np.unpackbits(np.frombuffer(dhash(x), np.uint8) ^ np.frombuffer(dhash(y), np.uint8)).sum())
    assert len(dhash(a)) == 32
    assert bits(a, copy) <= 4 < bits(a, other)
