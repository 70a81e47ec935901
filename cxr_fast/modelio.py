"""The model directory, its one owner: find, read, write, and load the weights. Loads without unpickling code.

    MODEL_DIR/model.pth    state_dict (torch.save), read with torch.load(weights_only=True)
    MODEL_DIR/model.json   arch, head, classes, task, image size, normalisation, thresholds, data, metrics
    MODEL_DIR/export.pkl   optional fastai export, read only when explicitly allowed (it runs pickled code)
"""
import json
from pathlib import Path

import torch

from .errors import ModelFormatError
from .models import build_model
from .table import write_atomic
from .version import __version__

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "head", "n_out", "classes", "task", "multilabel", "img_size", "normalize")
PICKLE_NAME = "export.pkl"


def locate_model_dir(path):
    "(folder, kind) of a model dir or a run dir's model/: kind 'safe' (model.json + model.pth) or 'pickle' (export.pkl only)."
    path = Path(path).expanduser()
    for name, kind in (("model.json", "safe"), (PICKLE_NAME, "pickle")):
        for candidate in (path, path / "model"):
            if (candidate / name).is_file(): return candidate, kind
    if not path.exists(): raise ModelFormatError(f"model directory {path} does not exist")
    raise ModelFormatError(f"{path} is not a cxr_fast model directory (no model.json or {PICKLE_NAME} in it "
                           f"or in {path / 'model'}); give the model/ folder a `train` run wrote")


def find_model_dir(path):
    "A model dir itself, or the `model/` folder of a run dir (one with model.json)."
    folder, kind = locate_model_dir(path)
    if kind != "safe":
        raise ModelFormatError(f"{folder} holds only fastai's {PICKLE_NAME}, no model.json; "
                               f"give the model/ folder a `train` run wrote")
    return folder


def read_model_json(model_dir):
    "The model description, checked for this version of cxr_fast."
    path = Path(model_dir) / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: unreadable model description ({e})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{path}: model format version {version!r} (written by cxr_fast "
                               f"{meta.get('cxr_fast_version', '?')}); this cxr_fast {__version__} reads version "
                               f"{FORMAT_VERSION}. Install the cxr_fast version that wrote it, or retrain.")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing: raise ModelFormatError(f"{path}: missing keys {missing}")
    return meta


def save_model_dir(model, model_dir, meta, learn=None):
    """Write `model`'s weights and `meta` (see REQUIRED_KEYS) atomically; with `learn`, also fastai's export.pkl."""
    model_dir = Path(model_dir)
    meta = {"format_version": FORMAT_VERSION, "cxr_fast_version": __version__, **meta}
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing: raise ValueError(f"model meta lacks {missing}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomic(model_dir / "model.pth", lambda p: torch.save(state, p))
    write_atomic(model_dir / "model.json", lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
    if learn is not None:
        write_atomic(model_dir / PICKLE_NAME, lambda p: learn.export(p.resolve()))
    return model_dir


def read_state_dict(model_dir, device="cpu"):
    "The weights of a model dir (or run dir) as a state dict, read with torch.load(weights_only=True)."
    path = find_model_dir(model_dir) / "model.pth"
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ModelFormatError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None


def load_model_module(model_dir, device="cpu"):
    "(torch module in eval mode, meta) from a model dir, weights read with weights_only=True."
    model_dir = find_model_dir(model_dir)
    meta = read_model_json(model_dir)
    model = build_model(meta["arch"], meta["n_out"], meta["head"])  # random init: the weights come from model.pth
    try:
        model.load_state_dict(read_state_dict(model_dir, device))
    except Exception as e:
        raise ModelFormatError(f"{model_dir / 'model.pth'}: weights do not load into {meta['arch']} ({e})") from None
    return model.to(device).eval(), meta
