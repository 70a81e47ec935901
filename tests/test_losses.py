"""Focal losses: numerics against plain CE/BCE and by hand, activation/decodes, and the loss a task gets."""
import math
import pickle

import pytest
import torch
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

from cxr_fast.core.errors import CxrError
from cxr_fast.training.losses import FocalLoss, FocalLossMultiLabel, inverse_frequency_weights, make_loss


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(16, 3) * 3


def test_focal_gamma0_alpha1_is_cross_entropy(logits):
    targ = torch.randint(0, 3, (16,))
    assert torch.allclose(FocalLoss(gamma=0, alpha=1)(logits, targ), CrossEntropyLossFlat()(logits, targ), atol=1e-6)


def test_focal_gamma0_with_class_weights_is_weighted_cross_entropy(logits):
    targ, w = torch.randint(0, 3, (16,)), torch.tensor([0.5, 2.0, 1.0])
    expected = CrossEntropyLossFlat(weight=w)(logits, targ)
    assert torch.allclose(FocalLoss(gamma=0, weight=w)(logits, targ), expected, atol=1e-6)


def test_focal_multilabel_gamma0_alpha1_is_bce(logits):
    targ = (torch.rand(16, 3) > 0.5).long()
    expected = BCEWithLogitsLossFlat()(logits, targ)
    assert torch.allclose(FocalLossMultiLabel(gamma=0, alpha=1)(logits, targ), expected, atol=1e-6)


def test_focal_gamma2_by_hand():
    # softmax of [0, 0] -> p_t = 0.5: (1 - 0.5)**2 * ln 2; of [ln 3, 0] with target 0 -> p_t = 0.75
    inp, targ = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]), torch.tensor([0, 0])
    by_hand = [0.25 * math.log(2), 0.0625 * -math.log(0.75)]
    loss = FocalLoss(gamma=2, alpha=1, reduction="none")(inp, targ)
    assert torch.allclose(loss, torch.tensor(by_hand), atol=1e-6)
    assert FocalLoss(gamma=2, alpha=0.5)(inp, targ).item() == pytest.approx(0.5 * sum(by_hand) / 2, abs=1e-6)


def test_focal_multilabel_gamma2_by_hand():
    # sigmoid(ln 3) = 0.75: target 1 -> p_t = 0.75; target 0 -> p_t = 0.25; logit 0 -> p_t = 0.5
    inp, targ = torch.tensor([[math.log(3), math.log(3), 0.0]]), torch.tensor([[1, 0, 1]])
    by_hand = [0.0625 * -math.log(0.75), 0.5625 * -math.log(0.25), 0.25 * math.log(2)]
    loss = FocalLossMultiLabel(gamma=2, reduction="none")(inp, targ)
    assert torch.allclose(loss, torch.tensor(by_hand), atol=1e-6)
    assert FocalLossMultiLabel(gamma=2)(inp, targ).item() == pytest.approx(sum(by_hand) / 3, abs=1e-6)


def test_activation_and_decodes():
    x = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]])
    single = FocalLoss()
    assert torch.allclose(single.activation(x), torch.softmax(x, dim=-1))
    assert single.decodes(single.activation(x)).tolist() == [1, 0]
    multi = FocalLossMultiLabel(thresh=0.6)
    probs = multi.activation(x)
    assert torch.allclose(probs, torch.sigmoid(x))
    assert multi.decodes(probs).tolist() == [[True, True, False], [True, False, True]]


def test_losses_pickle_for_export():
    for loss in (FocalLoss(alpha=1, gamma=2, weight=torch.tensor([1.0, 2.0])), FocalLossMultiLabel(gamma=1)):
        again = pickle.loads(pickle.dumps(loss))
        x, t = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
        targ = t if isinstance(loss, FocalLoss) else torch.stack([t, 1 - t], 1)
        assert torch.allclose(again(x, targ), loss(x, targ))


def test_make_loss_picks_by_task():
    assert isinstance(make_loss("auto", multilabel=False), CrossEntropyLossFlat)
    assert isinstance(make_loss("auto", multilabel=True), BCEWithLogitsLossFlat)
    assert isinstance(make_loss("ce", label_smoothing=0.1), LabelSmoothingCrossEntropyFlat)
    focal = make_loss("focal", False, class_weights=[1.0, 3.0], alpha=1, gamma=2)
    assert isinstance(focal, FocalLoss) and focal.func.weight.tolist() == [1.0, 3.0]
    assert isinstance(make_loss("focal", True), FocalLossMultiLabel)


@pytest.mark.parametrize("kwargs, words", [
    (dict(loss="ce", multilabel=True), "single-label"),
    (dict(loss="bce", multilabel=False), "multi-label"),
    (dict(loss="focal", label_smoothing=0.1), "label-smoothing"),
    (dict(loss="bce", multilabel=True, class_weights=[1, 2]), "single-label"),
    (dict(loss="dice"), "ce, bce, focal"),
])
def test_make_loss_errors_are_one_line(kwargs, words):
    with pytest.raises(CxrError) as e: make_loss(**kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_inverse_frequency_weights():
    assert inverse_frequency_weights([10, 30]).tolist() == pytest.approx([1.5, 0.5])
    assert inverse_frequency_weights([5, 0, 5]).tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_focal_loss_without_class_weights_is_fastais_focal_loss_flat():
    from fastai.losses import FocalLossFlat
    torch.manual_seed(0)
    logits, targ = torch.randn(16, 3), torch.randint(0, 3, (16,))
    assert torch.allclose(FocalLoss(gamma=2, alpha=1)(logits, targ), FocalLossFlat(gamma=2)(logits, targ), atol=1e-6)
