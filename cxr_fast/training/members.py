"""`--members N`: a deep ensemble (Lakshminarayanan et al. 2017), N models trained alike and their logits averaged.

Member k trains the run's freeze plan from seed SEED+k (its head's initialisation, batches and augmentation) on the
run's own splits, in RUN_DIR/members/K with its own checkpoints and history.csv, so an interrupted run resumes
inside the member it stopped in (`--resume true`); a finished member's weights are kept in members/K/weights.pth
and not trained again. The members then become one models.ensemble.Ensemble, which the run evaluates and saves like
any model (model.json: `members`). N members cost N times the training time of one.
"""
import copy
from pathlib import Path

import pandas as pd
import torch

from ..core.errors import CxrError
from ..core.jsonio import write_atomic
from ..models.ensemble import Ensemble
from .checkpoints import load_last, model_state, write_history
from .learner import build_learner

MEMBERS_DIR = "members"


def member_dir(run_dir, k):
    return Path(run_dir) / MEMBERS_DIR / str(k)


def check_members(config):
    "Members train one after another in one process: a distributed launch of an ensemble is refused."
    if config["members"] > 1 and (config.get("processes") or 1) > 1:
        raise CxrError(f"--members {config['members']} trains its members one after another in one process; launch it "
                       f"as one process (not with torchrun/accelerate), or train members as separate runs")


def fit_members(learn, table, run_dir, config, cbs, run_plan):
    """Train config['members'] members (run_plan for each, see the module docstring); learn.model becomes their
    Ensemble and RUN_DIR/history.csv their histories one after another (a `member` column)."""
    models, histories = [], []
    for k in range(config["members"]):
        model, history = fit_member(k, learn, table, run_dir, config, cbs, run_plan)
        models.append(model)
        histories.append(history.assign(member=k + 1) if history is not None else None)
    device = next(learn.model.parameters()).device
    learn.model = Ensemble(models).to(device)
    if any(h is not None for h in histories): write_history(pd.concat(histories).to_dict("records"),
                                                            Path(run_dir) / "history.csv")
    return learn


def fit_member(k, run_learn, table, run_dir, config, cbs, run_plan):
    """(member k's model with its best weights, its history) trained, resumed, or read back from members/K/weights.pth
    into a copy of the run's model (`run_learn`'s: the same module, no learner to build for a finished member)."""
    folder = member_dir(run_dir, k)
    done = folder / "weights.pth"
    if done.is_file():
        print(f"member {k + 1} of {config['members']}: trained before ({done})")
        model = copy.deepcopy(run_learn.model)
        model.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
        return model, read_history(folder)
    member = {**config, "seed": config["seed"] + k}
    learn = build_learner(member, table, folder)
    device = getattr(learn.dls, "device", None) or "cpu"
    ckpt = load_last(folder / "checkpoints" / "last.pth", device) if config["resume"] else None
    print(f"member {k + 1} of {config['members']} (seed {member['seed']}){', resumed' if ckpt else ''}")
    run_plan(learn, config["plan"], folder, member, ckpt, cbs)
    best = folder / "checkpoints" / "best.pth"
    if config["save_best"] and best.is_file():
        learn.model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    state = model_state(learn.model)
    write_atomic(done, lambda p: torch.save(state, p))
    return learn.model, read_history(folder)


def read_history(folder):
    path = Path(folder) / "history.csv"
    return pd.read_csv(path) if path.is_file() else None
