"""Architecture registry: name -> body constructor, layer groups, input adapter and default image size.

Bodies keep their library's child names (`conv1`, `layer1`, `features` for torchvision; `blocks.5` for timm;
`features.denseblock4` for torchxrayvision), so the layers the experiments name resolve with
`named_layer(model, name)`. Heads are fastai's `create_head`. Every model takes the toolkit's one input
(grayscale replicated to 3 channels, normalised with ImageNet statistics, see blocks.py); a body pretrained on
another input (timm's mean/std 0.5, torchxrayvision's 1-channel [-1024, 1024]) starts with an `InputAdapter`,
so training, predict and Grad-CAM feed it the same thing. Where weights come from: weights.py.
"""
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import timm
from fastai.torch_core import apply_init
from fastai.vision.all import imagenet_stats
from fastai.vision.learner import create_head, model_meta, num_features_model
from torch import nn
from torchvision import models as tvm

from ..core.errors import CxrError

XRV_WEIGHTS = {  # cxr_fast arch name -> torchxrayvision weights name (model_urls key)
    "xrv-densenet121-res224-all": "densenet121-res224-all",
    "xrv-densenet121-res224-nih": "densenet121-res224-nih",
    "xrv-densenet121-res224-pc": "densenet121-res224-pc",
    "xrv-densenet121-res224-chex": "densenet121-res224-chex",
    "xrv-densenet121-res224-rsna": "densenet121-res224-rsna",
    "xrv-densenet121-res224-mimic_nb": "densenet121-res224-mimic_nb",
    "xrv-densenet121-res224-mimic_ch": "densenet121-res224-mimic_ch",
    "xrv-resnet50-res512-all": "resnet50-res512-all",
}
XRV_INPUT = {"mean": [0.5], "std": [1 / 2048], "channels": 1}  # [0, 1] gray -> [-1024, 1024], one channel


@dataclass(frozen=True)
class Arch:
    "What the registry knows of one architecture."
    family: str                      # torchvision, timm or xrv
    body: Callable[[], nn.Module]    # () -> randomly initialised body (a feature map out)
    split: Callable                  # model -> list of parameter groups (body groups..., head)
    input: dict | None = None        # InputAdapter spec; None: the toolkit's ImageNet-normalised input as it is
    size: int = 224                  # the image size the pretrained weights were trained at


class InputAdapter(nn.Module):
    """Re-scales the toolkit's ImageNet-normalised 3-channel input to a body's own: `(x01 - mean) / std` on
    the first `channels` channels, where x01 is the [0, 1] image (all channels are the same gray)."""

    def __init__(self, mean, std, channels=3):
        super().__init__()
        self.spec = {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "channels": int(channels)}

    def forward(self, x):
        c = self.spec["channels"]
        in_mean, in_std = (x.new_tensor(s[:c]).view(1, c, 1, 1) for s in imagenet_stats)
        mean, std = (x.new_tensor(self.spec[k] * (c // len(self.spec[k]))).view(1, c, 1, 1) for k in ("mean", "std"))
        return (x[:, :c] * in_std + in_mean - mean) / std

    def extra_repr(self): return str(self.spec)


def needs_adapter(spec):
    "False for no spec or one that is the toolkit's own input (ImageNet stats, 3 channels)."
    if not spec: return False
    same = [round(v, 3) for v in spec["mean"]] == [round(v, 3) for v in imagenet_stats[0]] and \
        [round(v, 3) for v in spec["std"]] == [round(v, 3) for v in imagenet_stats[1]]
    return not (same and spec.get("channels", 3) == 3)


# ---- torchvision ----------------------------------------------------------------------------

def named_body(model, cut):
    "The first children of a torchvision model, keeping their names."
    return nn.Sequential(OrderedDict(list(model.named_children())[:cut]))


def _vgg16_split(m):
    "Plain VGG16 layer groups: conv blocks 1-3, conv blocks 4-5, head."
    return [list(m[0].features[:17].parameters()), list(m[0].features[17:].parameters()), list(m[1].parameters())]


def _group_split(fn):
    return lambda m: [list(g.parameters()) if isinstance(g, nn.Module) else list(g) for g in fn(m)]


def _torchvision(fn, cut, split):
    return Arch("torchvision", lambda: named_body(fn(weights=None), cut), _group_split(split))


def _fastai_meta(fn):
    "(constructor, body cut, layer-group splitter) from fastai's model_meta."
    return fn, model_meta[fn]["cut"], model_meta[fn]["split"]


TORCHVISION = {  # name -> torchvision constructor, body cut (children kept), fastai layer-group splitter
    "resnet18": _fastai_meta(tvm.resnet18),
    "resnet34": _fastai_meta(tvm.resnet34),
    "resnet50": _fastai_meta(tvm.resnet50),
    "vgg16": (tvm.vgg16, -2, _vgg16_split),  # model_meta has the VGGs with batch norm only
    "vgg16_bn": _fastai_meta(tvm.vgg16_bn),
    "densenet121": _fastai_meta(tvm.densenet121),
}
ARCHS = {name: _torchvision(*spec) for name, spec in TORCHVISION.items()}


# ---- timm: any model name, layer groups from timm's own stage structure ------------------------

class TimmFeatures(nn.Module):
    "A timm model's feature extractor (`forward_features`), with an optional input adapter; keys as fastai's TimmBody."

    def __init__(self, model, adapter=None):
        super().__init__()
        self.input = adapter or nn.Identity()
        self.model = model

    def forward(self, x): return self.model.forward_features(self.input(x))


def timm_input(arch):
    "The input adapter spec of a timm model's pretrained config (its mean and std)."
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None: return None
    return {"mean": list(cfg.mean), "std": list(cfg.std), "channels": 3}


def timm_groups(body):
    "Parameter groups of a timm body by timm's own stages (`group_matcher(coarse=True)`): stem, each stage, head conv."
    model = body.model
    if not hasattr(model, "group_matcher"): return [list(body.parameters())]
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    params = dict(model.named_parameters())
    return [[params[n] for n in names] for names in groups.values()]


def _timm_split(m): return [*timm_groups(m[0]), list(m[1].parameters())]


def timm_arch(arch):
    "An Arch for any timm model name."
    spec = timm_input(arch)
    cfg = timm.models.get_pretrained_cfg(arch)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    return Arch("timm", lambda: TimmFeatures(timm.create_model(arch, pretrained=False, num_classes=0),
                                             InputAdapter(**spec) if needs_adapter(spec) else None),
                _timm_split, spec if needs_adapter(spec) else None, size)


# ---- torchxrayvision: chest-X-ray pretrained DenseNet121 / ResNet50 ----------------------------

def import_xrv():
    "torchxrayvision, or an error saying how to install it."
    try:
        import torchxrayvision
    except ImportError:
        raise CxrError("torchxrayvision models need the torchxrayvision package: pip install torchxrayvision "
                       "(or pip install 'cxr_fast[xrv]')") from None
    return torchxrayvision


def _xrv_resnet_model():
    "torchxrayvision's ResNet50-512 architecture (a torchvision resnet50, 18 outputs, 1-channel conv1)."
    m = tvm.resnet50(weights=None, num_classes=18)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def xrv_body(arch, source=None):
    "Body of an xrv-* arch (from `source`, a torchxrayvision model, or randomly initialised): adapter + features."
    adapter = InputAdapter(**XRV_INPUT)
    if "resnet50" in arch:
        net = source.model if source is not None else _xrv_resnet_model()
        return nn.Sequential(OrderedDict([("input", adapter), *list(net.named_children())[:-2]]))
    net = source if source is not None else import_xrv().models.DenseNet(weights=None)
    return nn.Sequential(OrderedDict([("input", adapter), ("features", net.features), ("relu", nn.ReLU())]))


def _xrv_densenet_split(m):
    f = m[0].features
    return [list(f[:7].parameters()), list(f[7:].parameters()), list(m[1].parameters())]


def _xrv_resnet_split(m):
    b = m[0]
    return [list(nn.Sequential(*list(b.children())[:6]).parameters()),
            list(nn.Sequential(*list(b.children())[6:]).parameters()), list(m[1].parameters())]


def xrv_arch(arch):
    resnet = "resnet50" in arch
    return Arch("xrv", lambda: xrv_body(arch), _xrv_resnet_split if resnet else _xrv_densenet_split, XRV_INPUT,
                512 if resnet else 224)


# ---- the registry --------------------------------------------------------------------------

@lru_cache(maxsize=None)
def arch_info(arch):
    "The registry entry of `arch`, or an error listing the valid names."
    if arch in ARCHS: return ARCHS[arch]
    if arch in XRV_WEIGHTS: return xrv_arch(arch)
    if timm.is_model(arch): return timm_arch(arch)
    raise CxrError(f"unknown architecture {arch!r}; choose one of {', '.join([*ARCHS, *XRV_WEIGHTS])} or any timm "
                   f"model name, e.g. tf_efficientnet_lite0 (python -c 'import timm; print(timm.list_models())')")


def check_arch(arch):
    "The arch name, or a CxrError listing the valid names."
    arch_info(arch)
    return arch


def default_size(arch):
    "The image size an architecture's pretrained weights were trained at (224 unless the registry says otherwise)."
    return arch_info(arch).size


def default_head(hidden=None, dropout=0.5, concat_pool=True):
    "A head specification: hidden layer sizes (fastai's default when None), dropout, concat pooling."
    return {"hidden": None if hidden is None else [int(h) for h in hidden], "dropout": float(dropout),
            "concat_pool": bool(concat_pool)}


def input_spec(arch):
    "The input adapter spec that `build_model(arch)` puts in front of the body (None: none), for model.json."
    return arch_info(arch).input


def build_model(arch, n_out, head=None, body=None):
    """The module `train` trains and `predict` loads: nn.Sequential(body, head), randomly initialised
    (weights.py loads pretrained or transferred weights into it). `body`: a ready body to use instead."""
    head = head or default_head()
    body = body if body is not None else arch_info(arch).body()
    nf = body.model.num_features if isinstance(body, TimmFeatures) else num_features_model(body)  # doubled by concat pool
    model_head = create_head(nf, n_out, lin_ftrs=head["hidden"], ps=head["dropout"], concat_pool=head["concat_pool"])
    apply_init(model_head, nn.init.kaiming_normal_)
    return nn.Sequential(body, model_head)


def splitter_for(arch):
    "fastai splitter (model -> list of parameter groups) for discriminative learning rates and freeze_to."
    return arch_info(arch).split


def named_layer(model, name):
    "A body layer by its torchvision/timm name (`conv1`, `layer3`, `features.10`, `blocks.5`), or an error listing names."
    body = model[0]
    for root in (body, getattr(body, "model", None)):
        if root is None: continue
        try:
            return root.get_submodule(name)
        except AttributeError:
            pass
    top = [n for n, _ in (body.model if hasattr(body, "model") else body).named_children()]
    raise CxrError(f"no layer named {name!r} in this body; top-level layers are {', '.join(top)} "
                   f"(sub-layers as 'features.10', 'blocks.5')")
