"""Resume: what checkpoints/last.pth holds (weights, optimizer, RNG, trackers, history) and best.pth, written and read
back; `--resume true` continues a killed run from its last finished epoch. The callbacks that write them after
every epoch are in callbacks.py.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.torch_core import get_random_states, set_random_states
from fastcore.foundation import L

from .distributed import plain_dl, unwrap
from ..core.errors import CxrError
from ..core.jsonio import jsonable, write_atomic
from .precision import scaler_state, set_scaler_state

RESUME_FREE = ("resume", "overwrite", "tracker", "tracker_dir", "sync_bn")  # config keys a resumed run may change
DERIVED = ("processes", "lr_suggestion", "table_sha1", "cxr_fast_version", "class_weight_values", "start_weights",
           "precision_used", "bs_used")  # not compared on resume


def plain(obj):
    """numpy scalars/arrays and fastcore L as Python/torch types that torch.load(weights_only=True) reads
    (not jsonio.jsonable: tensors stay tensors)."""
    if isinstance(obj, dict): return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)): return [plain(v) for v in obj]
    if isinstance(obj, np.generic): return obj.item()
    if isinstance(obj, np.ndarray): return torch.from_numpy(obj.copy())
    if isinstance(obj, torch.Tensor): return tensor_data(obj)
    return obj


def tensor_data(t):
    "A plain CPU torch.Tensor (fastai's TensorBase subclasses do not load with weights_only=True)."
    return t.detach().cpu().as_subclass(torch.Tensor)


def model_state(model):
    "A model's state dict as plain CPU tensors (the module inside DistributedDataParallel: the same keys)."
    return {k: tensor_data(v) for k, v in unwrap(model).state_dict().items()}


def rng_state(learn):
    """Every random state training draws from: fastai's `get_random_states` (Python, numpy, torch CPU and CUDA, the
    cuDNN flags) as `plain` values that torch.load(weights_only=True) reads, and the DataLoaders' own."""
    return {**plain(get_random_states()), "dl_train": plain_dl(learn.dls.train).rng.getstate(),
            "dl_valid": plain_dl(learn.dls.valid).rng.getstate()}


OLD_RNG_KEYS = {"python": "random_state", "numpy": "numpy_state", "torch": "torch_state", "cuda": "torch_cuda_state"}


def set_rng_state(learn, state):
    """Restore what rng_state saved through fastai's `set_random_states`, after turning the saved values back into
    what it takes, which it does not do: tuples and a numpy array, CPU tensors (a checkpoint is loaded onto the
    training device), no CUDA states without CUDA. Reads checkpoints written before (keys python, numpy, ...)."""
    state = {OLD_RNG_KEYS.get(k, k): v for k, v in state.items()}
    version, keys, gauss = state["random_state"]
    name, np_keys, pos, has_gauss, cached = state["numpy_state"]
    cuda = [s.cpu() for s in state["torch_cuda_state"]] if torch.cuda.is_available() else []
    set_random_states(random_state=(version, tuple(keys), gauss),
                      numpy_state=(name, np_keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached),
                      torch_state=state["torch_state"].cpu(), torch_cuda_state=cuda,
                      torch_deterministic=state.get("torch_deterministic", torch.backends.cudnn.deterministic),
                      torch_benchmark=state.get("torch_benchmark", torch.backends.cudnn.benchmark))
    for dl, key in ((plain_dl(learn.dls.train), "dl_train"), (plain_dl(learn.dls.valid), "dl_valid")):
        version, keys, gauss = state[key]
        dl.rng.setstate((version, tuple(keys), gauss))


def save_last(learn, path, stage_idx, epoch, done, history, best=None, early=None):
    "checkpoints/last.pth: weights, optimizer state, position in the plan, RNG and tracker states (atomic)."
    smooth = learn.recorder.smooth_loss
    state = {"model": model_state(learn.model),
             "opt": plain(learn.opt.state_dict()), "stage": stage_idx, "epoch": epoch, "stage_done": done,
             "pct_train": float(learn.pct_train), "rng": rng_state(learn), "history": history,
             "smooth_loss": {"val": plain(smooth.val), "count": int(smooth.count)},
             "best": None if best is None else float(best.best),
             "early": None if early is None else {"best": float(early.best), "wait": int(early.wait)},
             "scaler": scaler_state(learn)}  # fp16's GradScaler (scale, growth tracker), None otherwise
    write_atomic(path, lambda p: torch.save(state, p))


def load_last(path, device="cpu"):
    "The last.pth state (tensors on `device`, where the optimizer state must live), or None when there is none."
    path = Path(path)
    if not path.is_file(): return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CxrError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to restart that run") from None


def restore_training(learn, ckpt):
    "Weights and optimizer state of the killed run (after the stage's freezing is applied)."
    learn.model.load_state_dict(ckpt["model"])
    opt = ckpt["opt"]
    learn.opt.load_state_dict({"state": opt["state"], "hypers": L(opt["hypers"])})


def write_history(rows, path):
    "history.csv: one row per epoch run, all stages (atomic)."
    write_atomic(path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))


def next_position(ckpt):
    "(stage index, epoch) where a resumed run continues."
    if ckpt is None: return 0, 0
    return (ckpt["stage"] + 1, 0) if ckpt["stage_done"] else (ckpt["stage"], ckpt["epoch"] + 1)


def resume_hook(learn, ckpt, mid_stage):
    "What a resumed stage restores before its fit: the weights (and mid-stage the optimizer state), the RNG states."
    def restore():
        if mid_stage: restore_training(learn, ckpt)
        else: learn.model.load_state_dict(ckpt["model"])
        set_rng_state(learn, ckpt["rng"])
        set_scaler_state(learn, ckpt.get("scaler"))  # the fit's GradScaler starts at the saved scale
    return restore


def check_resume(saved, config, run_dir):
    "Refuse to resume a run whose configuration differs in anything but `resume`."
    keys = (set(saved) | set(config)) - set(RESUME_FREE) - set(DERIVED)
    diff = sorted(k for k in keys if jsonable(saved.get(k)) != jsonable(config.get(k)))
    if diff:
        shown = "; ".join(f"{k}: {jsonable(saved.get(k))!r} -> {jsonable(config.get(k))!r}" for k in diff[:4])
        raise CxrError(f"cannot resume {run_dir}: the configuration differs from its config.json ({shown}); "
                       f"resume with the same options, or start a new run (another --out, or --overwrite)")

