import numpy as np
import pytest
import torch
from PIL import Image

from cxr_fast.core.errors import CxrError
from cxr_fast.inference.gradcam import default_layer, gradcam, jet, overlay
from cxr_fast.models.registry import build_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", 3)


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_heatmap_has_the_image_size_is_in_unit_range_and_depends_on_the_target(resnet, batch):
    h0, h1 = gradcam(resnet, batch, target=0), gradcam(resnet, batch, target=1)
    assert h0.shape == (2, 64, 64) and h0.dtype == np.float32
    assert 0 <= h0.min() and h0.max() <= 1 and h0.max() == pytest.approx(1.0)
    assert not np.allclose(h0, h1, atol=1e-3)  # another class, another explanation
    per_image = gradcam(resnet, batch, target=[0, 1])
    assert np.allclose(per_image[0], h0[0], atol=1e-5) and np.allclose(per_image[1], h1[1], atol=1e-5)
    predicted = resnet.eval()(batch).argmax(1).tolist()
    assert np.allclose(gradcam(resnet, batch), gradcam(resnet, batch, target=predicted), atol=1e-5)


def test_model_is_left_as_it_was(resnet, batch):
    resnet.train()
    resnet[0].requires_grad_(False)  # a frozen body: Grad-CAM still needs a graph through it
    flags = [p.requires_grad for p in resnet.parameters()]
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    with torch.no_grad():  # as predict calls it
        heat = gradcam(resnet, batch, target=2)
    with torch.inference_mode():
        x_inf = batch.clone()
    assert np.allclose(gradcam(resnet, x_inf, target=2), heat, atol=1e-5)
    assert resnet.training and [p.requires_grad for p in resnet.parameters()] == flags
    assert all(p.grad is None for p in resnet.parameters())
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in state.items())  # BN running stats untouched (eval mode)
    resnet[0].requires_grad_(True)
    resnet.eval()


def test_default_layer_is_the_last_conv_block_and_small_inputs_still_work(resnet):
    x = torch.randn(1, 3, 64, 64)
    layer = default_layer(resnet, x)
    with torch.no_grad():
        assert torch.equal(layer(x), resnet[0].layer4(resnet[0].layer3(resnet[0].layer2(resnet[0].layer1(
            resnet[0].maxpool(resnet[0].relu(resnet[0].bn1(resnet[0].conv1(x)))))))))
    tiny = torch.randn(1, 3, 32, 32)  # layer4 is 1x1 here: the last layer with a real map is used instead
    heat = gradcam(resnet, tiny, target=0)
    assert heat.shape == (1, 32, 32) and heat.max() > heat.min()
    explicit = gradcam(resnet, x, target=0, layer=resnet[0].layer3)
    assert explicit.shape == (1, 64, 64)


def test_timm_body():
    model = build_model("test_resnet", 2)
    heat = gradcam(model, torch.randn(2, 3, 64, 64), target=1)
    assert heat.shape == (2, 64, 64) and np.isfinite(heat).all() and heat.max() <= 1


def test_bad_targets_are_user_errors(resnet, batch):
    with pytest.raises(CxrError, match="out of range"): gradcam(resnet, batch, target=3)
    with pytest.raises(CxrError, match="2 images"): gradcam(resnet, batch, target=[0])
    with pytest.raises(CxrError, match="batch"): gradcam(resnet, batch[0], target=0)


def test_overlay_blends_jet_over_the_grayscale_image():
    img = Image.fromarray(np.full((40, 50), 100, np.uint8))
    heat = np.linspace(0, 1, 20 * 20, dtype=np.float32).reshape(20, 20)  # another size: resized to the image
    out = overlay(img, heat)
    assert out.mode == "RGB" and out.size == (50, 40)
    assert np.array_equal(np.asarray(overlay(img, heat, alpha=0.0)), np.full((40, 50, 3), 100, np.uint8))
    full = np.asarray(overlay(img, np.ones((40, 50), np.float32), alpha=1.0))
    assert np.array_equal(full[0, 0], jet(np.ones((1, 1)))[0, 0])  # jet at 1 is dark red
    assert full[0, 0, 0] > 100 and full[0, 0, 2] < 50
    rgb = overlay(Image.new("RGB", (16, 16), (10, 200, 30)), np.zeros((16, 16), np.float32))
    assert rgb.mode == "RGB"
