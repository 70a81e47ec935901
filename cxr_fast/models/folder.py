"""The model directory, its one owner: find, read, write, and load the weights. Loads without unpickling code.

    MODEL_DIR/model.pth    state_dict (torch.save), read with torch.load(weights_only=True)
    MODEL_DIR/model.json   arch, head, classes, task, image size, normalisation, thresholds, data, metrics
    MODEL_DIR/export.pkl   optional fastai export, read only when explicitly allowed (it runs pickled code)
    MODEL_DIR/MODEL_CARD.md  the model card (card.py), rewritten from model.json whenever it changes
"""
import hashlib
import json
import pickle
import re
from pathlib import Path

import torch

from ..evaluation.card import CARD_NAME, add_evaluation, card_facts, write_card
from ..core.errors import ModelFormatError
from .ensemble import model_from_meta
from ..core.jsonio import write_atomic
from ..core.version import __version__

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "head", "n_out", "classes", "task", "multilabel", "img_size", "normalize")
PICKLE_NAME = "export.pkl"


def file_sha256(path):
    "SHA-256 of a file's bytes, in hex (weights provenance, the weights an export came from)."
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""): h.update(block)
    return h.hexdigest()


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
    check_fields(meta, path)
    return meta


def _positive_int(v): return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _numbers(v, n): return isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and not
                                                                        isinstance(x, bool) for x in v)


FIELD_CHECKS = {  # model.json field: (test of its value, what it must be)
    "arch": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty architecture name"),
    "n_out": (_positive_int, "a positive integer"),
    "classes": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) and c for c in v),
                "a list of class names"),
    "multilabel": (lambda v: isinstance(v, bool), "true or false"),
    "task": (lambda v: isinstance(v, str), "a task name"),
    "img_size": (lambda v: _positive_int(v) or (isinstance(v, list) and len(v) == 2 and all(map(_positive_int, v))),
                 "a positive integer (or [height, width])"),
    "head": (lambda v: isinstance(v, dict), "an object"),
    "normalize": (lambda v: isinstance(v, dict) and _numbers(v.get("mean"), 3) and _numbers(v.get("std"), 3)
                  and all(x > 0 for x in v["std"]), "{'mean': [3 numbers], 'std': [3 positive numbers]}"),
    "members": (lambda v: v is None or _positive_int(v), "a positive integer"),
    "resize_method": (lambda v: isinstance(v, str), "a resize method name"),
    "preprocessing": (lambda v: isinstance(v, str), "preprocessing steps joined by '+'"),
    "thresholds": (lambda v: v is None or isinstance(v, dict), "an object {class: threshold}"),
}


def check_fields(meta, path):
    "Every field predict relies on has the type and range it needs, and classes agree with n_out; else one line."
    for name, (ok, what) in FIELD_CHECKS.items():
        if name in meta and not ok(meta[name]):
            raise ModelFormatError(f"{path}: field {name!r} must be {what}, got {meta[name]!r}; copy model.json again "
                                   f"from the run that wrote it")
    if len(meta["classes"]) != meta["n_out"]:
        raise ModelFormatError(f"{path}: field 'classes' names {len(meta['classes'])} classes but 'n_out' is "
                               f"{meta['n_out']}; they must agree (copy model.json again from the run that wrote it)")


def save_model_dir(model, model_dir, meta, learn=None):
    """Write `model`'s weights and `meta` (see REQUIRED_KEYS) atomically; with `learn`, also fastai's export.pkl."""
    model_dir = Path(model_dir)
    meta = {"format_version": FORMAT_VERSION, "cxr_fast_version": __version__, **meta}
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing: raise ValueError(f"model meta lacks {missing}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomic(model_dir / "model.pth", lambda p: torch.save(state, p))
    write_model_json(model_dir, meta)
    if learn is not None:
        write_atomic(model_dir / PICKLE_NAME, lambda p: learn.export(p.resolve()))
    return model_dir


def write_model_json(model_dir, meta):
    "model.json with its `card` facts, and MODEL_CARD.md from the same facts (both atomic)."
    meta = {**meta, "card": card_facts(meta)}
    write_atomic(Path(model_dir) / "model.json", lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
    write_card(model_dir, meta)
    return meta


def record_evaluation(model_dir, entry):
    "Add one external evaluation (card.evaluation_entry) to model.json and MODEL_CARD.md; returns the card's path."
    model_dir = find_model_dir(model_dir)
    write_model_json(model_dir, add_evaluation(read_model_json(model_dir), entry))
    return model_dir / CARD_NAME


def card_path(model_dir):
    "Where a model dir's MODEL_CARD.md is (None when it has none, e.g. written by an older cxr_fast)."
    folder, _ = locate_model_dir(model_dir)
    path = folder / CARD_NAME
    return path if path.is_file() else None


def read_state_dict(model_dir, device="cpu"):
    """The weights of a model dir (or run dir) as a state dict, read with torch.load(weights_only=True).

    A file holding pickled objects (code: a whole module, or anything built by calling a function on load) is
    refused with a message saying so; the loader never suggests weights_only=False."""
    path = find_model_dir(model_dir) / "model.pth"
    if not path.is_file():
        raise ModelFormatError(f"{path}: missing: the model folder has model.json but no weights; copy model.pth from "
                               f"the run that wrote it")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a GLOBAL: the file wants to import and call code
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it imports {found.group(1)})" if found else ""
        raise ModelFormatError(f"{path}: not a plain state dict: it contains pickled code{what}, and cxr_fast will "
                               f"not load it (loading it could run that code). A model.pth holds tensors only "
                               f"(torch.save(model.state_dict())); retrain, or take model.pth from a `train` run") from None
    except Exception as e:  # truncated, or not a torch file at all
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ModelFormatError(f"{path}: unreadable weights ({reason}); the file is damaged or not a torch file: "
                               f"copy model.pth again from the run that wrote it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict of " + ", ".join(
            sorted({type(v).__name__ for v in state.values()}))
        raise ModelFormatError(f"{path}: not a plain state dict of tensors (it holds {kind}); a model.pth holds "
                               f"torch.save(model.state_dict()) only")
    return state


def check_fit(model, state, meta, path):
    "One line saying how model.json and model.pth disagree (another architecture or head), or nothing when they fit."
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(want[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes): return
    example = (f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in model.pth but {tuple(want[shapes[0]].shape)} for "
               f"model.json" if shapes else f"e.g. {(missing or unexpected)[0]!r} is "
                                           f"{'missing from model.pth' if missing else 'in model.pth but not in that model'}")
    raise ModelFormatError(
        f"{path.parent}: model.json and model.pth disagree: model.json describes {members_words(meta)}{meta['arch']} "
        f"with head hidden sizes {meta['head'].get('hidden') or 'default'} and {meta['n_out']} outputs, but model.pth "
        f"holds the weights of another architecture or head ({len(missing)} missing, {len(unexpected)} unexpected and "
        f"{len(shapes)} differently shaped tensors; {example}); copy both files from the same run")


def members_words(meta):
    "'an ensemble of N ' for an ensemble's model.json, else nothing (for messages)."
    n = int(meta.get("members") or 1)
    return f"an ensemble of {n} " if n > 1 else ""


def load_model_module(model_dir, device="cpu"):
    "(torch module in eval mode, meta) from a model dir, weights read with weights_only=True."
    model_dir = find_model_dir(model_dir)
    meta = read_model_json(model_dir)
    model = model_from_meta(meta)  # random init: the weights come from model.pth
    state = read_state_dict(model_dir, device)
    check_fit(model, state, meta, model_dir / "model.pth")
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise ModelFormatError(f"{model_dir / 'model.pth'}: weights do not load into {meta['arch']} ({e})") from None
    return model.to(device).eval(), meta
