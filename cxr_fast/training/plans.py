"""The freeze-plan language and its stages: what trains, for how many epochs, at which learning rates.

A plan is a list of stages; each stage sets what trains, then runs one `fit_one_cycle`:

    WHAT:EPOCHS[@LR]   stages joined by ','  (Python: a list of {"train": WHAT, "epochs": E, "lr": LR,
                                              optional "pct_start", "div"})
    WHAT  head              only the head trains (feature extraction; fastai `freeze()`)
          all               everything trains (fastai `unfreeze()`)
          freeze_to=N       the last N layer groups train (fastai `freeze_to(-N)`)
          layers=A+B+C      the named body layers and the head train (`conv1+layer1+layer3`, VGG `features.10`)
    LR    1e-3              one rate for every layer group (the global --lr when left out)
          1e-5:1e-3         slice(1e-5, 1e-3): discriminative rates spread across the layer groups
          :1e-3             slice(1e-3): 1e-3 for the head group, 1e-4 for the body groups
          auto, auto/10     lr_find's valley suggestion (divided by 10); usable for lo and hi as well

"Frozen" follows fastai's default `train_bn=True`: BatchNorm weights and biases of frozen layers keep
training (what `fine_tune` does); `train_bn=False` freezes them too. Without --plan, a pretrained body
(ImageNet or --weights) gets fastai's `fine_tune(epochs, lr, freeze_epochs)` and a body trained from
scratch one `fit_one_cycle(epochs, lr)` of everything.
"""
import json
import re

from ..core.args import as_float, as_int
from ..core.errors import CxrError
from ..models.registry import named_layer

STAGE_DEFAULTS = {"pct_start": 0.25, "div": 25.0}  # fit_one_cycle's
PLAN_HELP = ("a plan is WHAT:EPOCHS[@LR] stages joined by ',' (WHAT: head, all, freeze_to=N or layers=NAME+NAME; "
             "LR: 1e-3, lo:hi, :hi or auto), e.g. head:2@1e-3,all:3@1e-5:1e-3")


# ---- learning rates and plans ----------------------------------------------------------------

def _lr_token(token):
    "One number of a learning-rate spec: a positive float, 'auto' or 'auto/K'; returned canonical."
    token = token.strip()
    if re.fullmatch(r"auto(/[0-9.eE+-]+)?", token):
        if "/" in token and not float(token[5:]) > 0: raise ValueError
        return token
    value = float(token)
    if not value > 0: raise ValueError
    return repr(value)


def parse_lr(value, where="lr"):
    """A learning rate: a number (every layer group), 'lo:hi' = slice(lo, hi), ':hi' = slice(hi), or with
    'auto'/'auto/K' (lr_find's valley, divided by K) in place of a number. Returns a float or a canonical string."""
    if isinstance(value, slice): value = f"{'' if value.start is None else value.start}:{value.stop}"
    if isinstance(value, (list, tuple)) and len(value) == 2: value = f"{value[0]}:{value[1]}"
    if isinstance(value, bool): value = None
    parts = str(value).strip().split(":")
    try:
        if len(parts) > 2 or parts[-1] == "": raise ValueError
        tokens = ["" if (i == 0 and len(parts) == 2 and p.strip() == "") else _lr_token(p)
                  for i, p in enumerate(parts)]
    except ValueError:
        raise CxrError(f"--{where}: bad learning rate {value!r}; use 1e-3, lo:hi (1e-5:1e-3), :hi or auto") from None
    if len(tokens) == 2 and "auto" not in "".join(tokens) and tokens[0] and float(tokens[0]) > float(tokens[1]):
        raise CxrError(f"--{where}: {value!r} has lo > hi; write lo:hi")
    if len(tokens) == 1 and "auto" not in tokens[0]: return float(tokens[0])
    return ":".join(tokens)


def lr_uses_auto(lr):
    "True when a parsed learning rate needs lr_find's suggestion."
    return isinstance(lr, str) and "auto" in lr


def to_fastai_lr(lr, suggestion=None):
    "A parsed learning rate as fastai takes it: float, slice(hi) or slice(lo, hi)."
    if isinstance(lr, float): return lr

    def number(token):
        if not token.startswith("auto"): return float(token)
        if suggestion is None: raise CxrError("learning rate 'auto' needs lr_find's suggestion; pass --lr-find true")
        return suggestion / (float(token[5:]) if "/" in token else 1.0)
    if ":" not in lr: return number(lr)
    lo, hi = lr.split(":")
    return slice(number(hi)) if lo == "" else slice(number(lo), number(hi))


def parse_what(what, where):
    "A stage's WHAT in canonical form: head, all, freeze_to=N, layers=A+B."
    m = re.fullmatch(r"\s*(head|all|freeze_to|layers)\s*(?:[=:]\s*(.+?))?\s*", str(what))
    if not m: raise CxrError(f"--plan stage {where!r}: unknown WHAT {what!r}; {PLAN_HELP}")
    kind, arg = m.groups()
    if kind in ("head", "all"):
        if arg: raise CxrError(f"--plan stage {where!r}: {kind} takes no argument; {PLAN_HELP}")
        return kind
    if not arg: raise CxrError(f"--plan stage {where!r}: {kind} needs an argument (freeze_to=2, layers=conv1+layer1)")
    if kind == "freeze_to":
        if not arg.isdigit() or int(arg) < 1:
            raise CxrError(f"--plan stage {where!r}: freeze_to needs a group count >= 1")
        return f"freeze_to={int(arg)}"
    names = [n for n in re.split(r"[+,\s]+", arg) if n]
    return "layers=" + "+".join(names)


def parse_stage(item, default_lr):
    "One stage from 'WHAT:EPOCHS[@LR]' or a dict {train, epochs, lr, pct_start, div}, in canonical form."
    if not isinstance(item, dict):
        text = str(item).strip()
        body, _, lr = text.partition("@")
        what, sep, epochs = body.rpartition(":")
        if not sep or not what.strip(): raise CxrError(f"--plan stage {text!r}: {PLAN_HELP}")
        item, where = {"train": what, "epochs": epochs, "lr": lr if lr.strip() else default_lr}, text
    else:
        where = json.dumps(item, default=str)
        unknown = set(item) - {"train", "epochs", "lr", *STAGE_DEFAULTS}
        if unknown or "train" not in item or "epochs" not in item:
            raise CxrError(f"--plan stage {where}: a stage dict has keys train, epochs and optionally "
                           f"lr, pct_start, div")
    try:
        epochs = as_int(item["epochs"], "plan epochs", min_value=1)
    except CxrError:
        raise CxrError(f"--plan stage {where!r}: EPOCHS must be an integer >= 1; {PLAN_HELP}") from None
    stage = {"train": parse_what(item["train"], where), "epochs": epochs,
             "lr": parse_lr(item.get("lr", default_lr), "plan lr")}
    for key, default in STAGE_DEFAULTS.items():
        stage[key] = as_float(item.get(key, default), f"plan {key}", min_value=0)
    return stage


def parse_plan(plan, default_lr):
    "A plan (string, list of strings/dicts, or None) as a list of canonical stage dicts (None when not given)."
    if plan is None or (isinstance(plan, str) and not plan.strip()): return None
    if isinstance(plan, dict): plan = [plan]
    items = list(plan) if isinstance(plan, (list, tuple)) else [s for s in str(plan).split(",")]
    if any(isinstance(i, str) and not i.strip() for i in items):
        raise CxrError(f"--plan has an empty stage; {PLAN_HELP}")
    if not items: raise CxrError(f"--plan is empty; {PLAN_HELP}")
    return [parse_stage(i, default_lr) for i in items]


def fine_tune_plan(epochs, lr, freeze_epochs):
    "fastai's `fine_tune(epochs, lr, freeze_epochs)` as a plan: head at slice(lr), then all at slice(lr/200, lr/2)."
    half = "auto/2" if lr == "auto" else repr(lr / 2)
    low = "auto/200" if lr == "auto" else repr(lr / 200)
    head = {"train": "head", "epochs": freeze_epochs, "lr": f":{lr}", "pct_start": 0.99, "div": 25.0}
    tail = {"train": "all", "epochs": epochs, "lr": f"{low}:{half}", "pct_start": 0.3, "div": 5.0}
    return ([head] if freeze_epochs > 0 else []) + [tail]


def default_plan(epochs, lr, freeze_epochs, frozen):
    "fine_tune for a pretrained body (`frozen`), else one fit_one_cycle of everything."
    if frozen: return fine_tune_plan(epochs, lr, freeze_epochs)
    return [{"train": "all", "epochs": epochs, "lr": lr, **STAGE_DEFAULTS}]


# ---- freezing --------------------------------------------------------------------------------

def freeze_named_layers(learn, names):
    "Train the named body layers and the head; every other body parameter frozen (BatchNorm per train_bn)."
    learn.unfreeze()
    keep = {id(p) for name in names for p in named_layer(learn.model, name).parameters()}
    for p in learn.model[0].parameters():
        if id(p) not in keep: p.requires_grad_(bool(learn.opt.state[p].get("force_train", False)))


def apply_stage(learn, stage):
    "Set what trains for a stage (fastai freeze / freeze_to / unfreeze; named layers by hand)."
    what = stage["train"]
    n_groups = len(learn.opt.param_lists) if learn.opt else len(learn.splitter(learn.model))
    if what == "head": learn.freeze()
    elif what == "all": learn.unfreeze()
    elif what.startswith("freeze_to="):
        n = int(what.split("=")[1])
        if n > n_groups:
            raise CxrError(f"--plan {what}: this model has {n_groups} layer groups; use freeze_to=1..{n_groups}")
        learn.freeze_to(-n)
    else:
        freeze_named_layers(learn, what.split("=", 1)[1].split("+"))
    for p in learn.model.parameters():  # a stale zero gradient would let weight decay move a frozen weight
        if not p.requires_grad: p.grad = None


def check_plan(learn, plan):
    "Fail before training on a stage that does not fit the model (layer names, group counts)."
    n_groups = len(learn.splitter(learn.model))
    for stage in plan:
        what = stage["train"]
        if what.startswith("layers="):
            for name in what.split("=", 1)[1].split("+"): named_layer(learn.model, name)
        if what.startswith("freeze_to=") and int(what.split("=")[1]) > n_groups:
            raise CxrError(f"--plan {what}: this model has {n_groups} layer groups; use freeze_to=1..{n_groups}")


def fit_stage(learn, stage, suggestion=None, cbs=None, start_epoch=0, before_fit=None):
    "Apply a stage's freezing, then one fit_one_cycle (from `start_epoch` when resuming)."
    apply_stage(learn, stage)
    if before_fit is not None: before_fit()
    learn.fit_one_cycle(stage["epochs"], to_fastai_lr(stage["lr"], suggestion), pct_start=stage["pct_start"],
                        div=stage["div"], cbs=cbs, start_epoch=start_epoch)
