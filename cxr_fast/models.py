"""Architecture registry: name -> constructor, body cut, layer groups, stats and pretrained weights.

Bodies keep torchvision's child names (`conv1`, `layer1`, `features`), so the layers the
experiments name (`conv1,layer1,layer3` for ResNet18, `features.10` for VGG16) resolve with
`model[0].get_submodule(name)`. Heads are fastai's `create_head`.
"""
import os
import socket
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from fastai.vision.learner import _densenet_split, _resnet_split, _vgg_split, create_head, num_features_model
from fastai.torch_core import apply_init
from torch import nn
from torchvision import models as tvm

from .errors import CxrError, WeightsError


def _vgg16_split(m):
    "Plain VGG16 layer groups: conv blocks 1-3, conv blocks 4-5, head."
    return [list(m[0].features[:17].parameters()), list(m[0].features[17:].parameters()), list(m[1].parameters())]


def _group_split(fn):
    return lambda m: [list(g.parameters()) if isinstance(g, nn.Module) else list(g) for g in fn(m)]


ARCHS = {  # name -> torchvision constructor, body cut (children kept), layer-group splitter
    "resnet18": (tvm.resnet18, -2, _resnet_split),
    "resnet34": (tvm.resnet34, -2, _resnet_split),
    "resnet50": (tvm.resnet50, -2, _resnet_split),
    "vgg16": (tvm.vgg16, -2, _vgg16_split),
    "vgg16_bn": (tvm.vgg16_bn, -2, _vgg_split),
    "densenet121": (tvm.densenet121, -1, _densenet_split),
}


def is_timm_name(arch):
    "True for a model name timm knows (any timm architecture works, e.g. efficientnet_b0, convnext_tiny)."
    import timm
    return arch not in ARCHS and timm.is_model(arch)


def check_arch(arch):
    "The arch name, or a ValueError-like CxrError listing the valid names."
    if arch in ARCHS or is_timm_name(arch): return arch
    raise CxrError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)} or any timm model name "
                   f"(python -c 'import timm; print(timm.list_models())')")


def default_head(hidden=None, dropout=0.5, concat_pool=True):
    "A head specification: hidden layer sizes (fastai's default when None), dropout, concat pooling."
    return {"hidden": None if hidden is None else [int(h) for h in hidden], "dropout": float(dropout),
            "concat_pool": bool(concat_pool)}


# ---- pretrained weights --------------------------------------------------------------------

def torchvision_weights(arch):
    "The default ImageNet weights enum member of a torchvision architecture."
    return tvm.get_model_weights(ARCHS[arch][0]).DEFAULT


def cached_weights_path(arch):
    "Where torch.hub caches `arch`'s ImageNet weights (under $TORCH_HOME/hub/checkpoints)."
    url = torchvision_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def online(host, timeout=3.0):
    "Whether `host`:443 answers within `timeout` s (CXR_FAST_OFFLINE=1 forces 'no')."
    if os.environ.get("CXR_FAST_OFFLINE", "").lower() in ("1", "true", "yes"): return False
    try:
        with socket.create_connection((host, 443), timeout=timeout): return True
    except OSError:
        return False


def offline_message(arch, where, url):
    return (f"ImageNet weights for {arch} are not cached ({where}) and this machine cannot download them. "
            f"Either: copy the file from {url} to {where} (TORCH_HOME sets the cache folder); "
            f"or pass --weights PATH (a local weights file, or a cxr_fast model/run folder to transfer from); "
            f"or pass --pretrained false to train from scratch.")


def ensure_pretrained_available(arch):
    "Fail at once, with what to do, when ImageNet weights are neither cached nor downloadable."
    if arch in ARCHS:
        path, url = cached_weights_path(arch), torchvision_weights(arch).url
        if path.is_file() or online(urlparse(url).hostname): return
        raise WeightsError(offline_message(arch, path, url))
    import timm
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        for fname in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, fname), str): return
        if online("huggingface.co"): return
        raise WeightsError(offline_message(arch, f"Hugging Face cache for {hub_id}, HF_HOME", f"https://huggingface.co/{hub_id}"))
    url = getattr(cfg, "url", None) if cfg is not None else None
    if url and not online(urlparse(url).hostname):
        raise WeightsError(offline_message(arch, torch.hub.get_dir(), url))


# ---- building ------------------------------------------------------------------------------

def named_body(model, cut):
    "The first children of a torchvision model, keeping their names."
    return nn.Sequential(OrderedDict(list(model.named_children())[:cut]))


def build_model(arch, n_out, head=None, pretrained=False):
    """The module `train` trains and `predict` loads: nn.Sequential(body, head).

    pretrained=True uses ImageNet weights (cached under TORCH_HOME, downloaded when online)."""
    check_arch(arch)
    head = head or default_head()
    if pretrained: ensure_pretrained_available(arch)
    if arch not in ARCHS:
        from fastai.vision.learner import create_timm_model
        return create_timm_model(arch, n_out, pretrained=pretrained, lin_ftrs=head["hidden"], ps=head["dropout"],
                                 concat_pool=head["concat_pool"])[0]
    fn, cut, _ = ARCHS[arch]
    body = named_body(fn(weights=torchvision_weights(arch) if pretrained else None), cut)
    nf = num_features_model(body)  # create_head doubles it for concat pooling
    model_head = create_head(nf, n_out, lin_ftrs=head["hidden"], ps=head["dropout"], concat_pool=head["concat_pool"])
    apply_init(model_head, nn.init.kaiming_normal_)
    return nn.Sequential(body, model_head)


def splitter_for(arch):
    "fastai splitter (model -> list of parameter groups) for discriminative learning rates."
    if arch in ARCHS: return _group_split(ARCHS[arch][2])
    return lambda m: [list(m[0].parameters()), list(m[1].parameters())]


def named_layer(model, name):
    "A body layer by its torchvision/timm name (`conv1`, `layer3`, `features.10`), or an error listing names."
    body = model[0]
    for root in (body, getattr(body, "model", None)):
        if root is None: continue
        try:
            return root.get_submodule(name)
        except AttributeError:
            pass
    top = [n for n, _ in (body.model if hasattr(body, "model") else body).named_children()]
    raise CxrError(f"no layer named {name!r} in this body; top-level layers are {', '.join(top)} "
                   f"(sub-layers as 'features.10')")


# ---- weights from a file or from one of our own models --------------------------------------

def load_state_dict_file(path):
    "A state dict from .pth/.pt/.bin (loaded with weights_only=True) or .safetensors."
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot load weights ({type(e).__name__}: {e}); give a state_dict saved with torch.save") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict): sd = sd["state_dict"]
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict): sd = sd["model"]
    if not isinstance(sd, dict): raise WeightsError(f"{path}: not a state_dict")
    return sd


def load_body_weights(model, arch, weights):
    """Initialise the body from `weights`: a cxr_fast model dir or run dir (transfer from a chest-X-ray
    model of the same arch), or a weights file of the plain architecture (e.g. torchvision's resnet18-*.pth)."""
    weights = Path(weights).expanduser()
    if weights.is_dir():
        from .modelio import find_model_dir, read_model_json
        mdir = find_model_dir(weights)
        meta = read_model_json(mdir)
        if meta["arch"] != arch:
            raise WeightsError(f"{mdir} holds a {meta['arch']} model; cannot transfer its body to {arch}")
        sd = load_state_dict_file(mdir / "model.pth")
        body_sd = {k[2:]: v for k, v in sd.items() if k.startswith("0.")}
    elif weights.is_file():
        sd = load_state_dict_file(weights)
        body_sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
        if isinstance(model[0], nn.Sequential) is False:  # timm body: keys under .model
            body_sd = {f"model.{k}": v for k, v in body_sd.items()}
    else:
        raise WeightsError(f"--weights {weights} does not exist; give a weights file or a cxr_fast model/run folder")
    result = model[0].load_state_dict(body_sd, strict=False)
    loaded = len(body_sd) - len(result.unexpected_keys)
    if loaded == 0 or len(result.missing_keys) > 0.5 * len(model[0].state_dict()):
        raise WeightsError(f"{weights}: its weights do not fit a {arch} body ({len(result.missing_keys)} missing, "
                           f"{len(result.unexpected_keys)} unexpected keys, e.g. {result.missing_keys[:3]})")
    return result
