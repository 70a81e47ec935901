import os
import threading

import numpy as np
import torch
from PIL import Image

from conftest import save_16bit_png, save_gray
from cxr_fast.data.blocks import get_dls
from cxr_fast.data.cache import ImageCache
from cxr_fast.data.images import load_image
from cxr_fast.data.table import build_table


def test_cached_image_equals_fresh_decode_and_resize(tmp_path):
    src = save_16bit_png(tmp_path / "big.png", size=96)
    cache = ImageCache(tmp_path / "cache", size=32)
    first = np.asarray(cache.get(src))
    second = np.asarray(cache.get(src))
    expected = np.asarray(load_image(src).resize((32, 32), Image.BILINEAR))
    assert cache.misses == 1 and cache.hits == 1
    assert np.array_equal(first, expected) and np.array_equal(second, expected)


def test_changed_source_invalidates_and_copies_share(tmp_path):
    src = save_gray(tmp_path / "a.png", seed=1)
    cache = ImageCache(tmp_path / "cache", size=16)
    before = np.asarray(cache.get(src))
    save_gray(src, seed=2)  # the file is replaced with another image
    os.utime(src, ns=(1, 1))
    after = np.asarray(cache.get(src))
    assert cache.misses == 2 and not np.array_equal(before, after)
    copy = tmp_path / "copy.png"
    copy.write_bytes(src.read_bytes())
    np.asarray(cache.get(copy))
    assert cache.hits == 1  # same content, same entry


def test_torn_entry_is_rebuilt_and_concurrent_writers_are_safe(tmp_path):
    src = save_gray(tmp_path / "a.png", seed=3)
    cache = ImageCache(tmp_path / "cache", size=16)
    entry = cache.entry_path(cache.key(src))
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"\x93NUMPY torn")  # a writer killed mid-file (cannot happen with rename, but be safe)
    assert cache.get(src).size == (16, 16)
    results = []
    caches = [ImageCache(tmp_path / "shared", size=16) for _ in range(4)]
    threads = [threading.Thread(target=lambda c=c: results.append(np.asarray(c.get(src)))) for c in caches]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert not list((tmp_path / "shared").rglob("*.tmp"))


def test_dataloaders_with_cache_match_without(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=3, image_size=64, valid_pct=0.3)
    plain = get_dls(table, size=32, bs=4, num_workers=0, aug="none")
    cached = get_dls(table, size=32, bs=4, num_workers=0, aug="none", cache=tmp_path / "cache")
    a, b = plain.valid.one_batch()[0], cached.valid.one_batch()[0]
    assert torch.allclose(a, b, atol=1e-6)
    n_entries = len(list((tmp_path / "cache").rglob("*.npy")))
    assert 4 <= n_entries <= 5  # the valid batch (+ the item fastai decodes when building the loaders)
    plain.valid.one_batch()  # the loaders without a cache do not write into it
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == n_entries
    tdl = cached.test_dl(table.head(2))
    tdl.one_batch()
    assert len(list((tmp_path / "cache").rglob("*.npy"))) >= n_entries  # test_dl reads through the same cache


def test_equalize_same_with_and_without_cache(tmp_path):
    from cxr_fast.data.images import preprocess
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=3, image_size=64, valid_pct=0.3)
    plain = get_dls(table, size=32, bs=4, num_workers=0, aug="none", preprocessing="equalize")
    cached = get_dls(table, size=32, bs=4, num_workers=0, aug="none", preprocessing="equalize", cache=tmp_path / "c")
    raw = get_dls(table, size=32, bs=4, num_workers=0, aug="none")
    a, b, c = (d.valid.one_batch()[0] for d in (plain, cached, raw))
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-3)
    img = load_image(table["path"][0])
    eq = np.asarray(preprocess(img, "equalize"))
    assert eq.min() == 0 and eq.max() == 255


def test_test_dl_without_labels_reads_through_the_cache(tmp_path):
    from cxr_fast.data.blocks import test_dl
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=3, image_size=64, valid_pct=0.3)
    dls = get_dls(table, size=32, bs=4, num_workers=0, aug="none", cache=tmp_path / "c")
    x = test_dl(dls, table.head(3), with_labels=False).one_batch()[0]
    assert x.shape == (3, 3, 32, 32)
