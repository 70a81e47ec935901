import numpy as np
import pytest
import torch

from cxr_fast.data.blocks import aug_tfms, get_dls, save_show_batch, test_dl
from cxr_fast.core.errors import DataError
from cxr_fast.data.table import build_table


@pytest.fixture
def phantom_3class(tmp_path):
    return build_table("phantom", tmp_path / "ph", "3class", patients_per_class=5, image_size=48, valid_pct=0.3, test_pct=0.2)


def test_single_label_batch_is_normalised_rgb_with_fixed_vocab(phantom_3class):
    dls = get_dls(phantom_3class, size=32, bs=4, num_workers=0)
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and list(dls.vocab) == ["Normal", "Pneumonia", "COVID-19"]
    assert torch.equal(x[:, 0] * 0.229 + 0.485, x[:, 0] * 0.229 + 0.485)  # sanity
    # the first batch is on the ImageNet-normalised scale, not 0..255 or 0..1 (cf. torchxrayvision's warning)
    assert -2.2 < x.min() < 0 < x.max() < 2.7
    # grayscale replicated: channels equal once un-normalised
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    raw = x * std[None, :, None, None] + mean[None, :, None, None]
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
    assert y.dtype == torch.long and y.max() < 3


def test_multilabel_batch_is_encoded(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "multilabel", patients_per_class=4, image_size=48, valid_pct=0.3)
    dls = get_dls(table, size=32, bs=6, num_workers=0, aug="none")
    _, y = dls.one_batch()
    assert y.shape == (6, 3) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert list(dls.vocab) == ["COVID-19", "Pneumonia", "Normal"]


def test_valid_split_is_the_tables_valid_rows_and_test_is_separate(phantom_3class):
    dls = get_dls(phantom_3class, size=32, bs=4, num_workers=0)
    assert len(dls.valid_ds) == (phantom_3class["split"] == "valid").sum()
    assert len(dls.train_ds) == (phantom_3class["split"] == "train").sum()
    tdl = test_dl(dls, phantom_3class[phantom_3class["split"] == "test"])
    assert len(tdl.dataset) == (phantom_3class["split"] == "test").sum()


def test_no_vertical_flip_in_default_preset():
    names = [type(t).__name__ for t in aug_tfms("cxr", 32)]
    assert "Flip" not in names and "Dihedral" not in names
    with pytest.raises(DataError, match="unknown augmentation preset 'x'.*cxr"):
        aug_tfms("x", 32)


def test_weighted_oversampling_loader(phantom_3class):
    n_train = (phantom_3class["split"] == "train").sum()
    dls = get_dls(phantom_3class, size=32, bs=4, num_workers=0, weights=np.ones(n_train))
    assert dls.one_batch()[0].shape[0] == 4


def test_show_batch_png(phantom_3class, tmp_path):
    dls = get_dls(phantom_3class, size=32, bs=4, num_workers=0)
    out = save_show_batch(dls, tmp_path / "batch.png", max_n=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
