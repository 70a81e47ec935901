"""train()'s options, each declared once: its default, what it accepts and one line of help.

From OPTIONS come train()'s signature (what `inspect.signature` and Fire read), the checks on its keywords (a wrong
value: a one-line CxrError naming the option and what it accepts; an unknown keyword: the close matches),
resolve_config's coercion, the `train` command's help, and the names tune's search space and the recipes may use.
"""
import difflib
import inspect
from dataclasses import dataclass
from pathlib import Path

from ..core.args import as_bool, as_choice, as_float, as_int, as_list
from ..core.errors import CxrError
from ..data.blocks import AUG_PRESETS
from ..data.images import check_preprocessing, jpeg_range
from ..data.resize import RESIZE_METHODS
from ..models.registry import check_arch, default_size
from .learner import BN_STATS, OPTIMIZERS, metric_names
from .losses import LOSSES
from .plans import default_plan, parse_lr, parse_plan
from .precision import PRECISIONS, precision_default
from .tracking import parse_trackers

DEDUP = ("warn", "drop", "off")
# The shortcut mitigation that did best on the cross-source pairs of `make bench-shortcuts` (another collection's
# images: no test of the disease, docs/shortcuts.md; where COVID-19 and normal share hospitals, `make
# bench-hospitals`, it does not make a one-source-per-class model work): every image cropped to its central field,
# then to a square (no image stretched, so the border and the shape reach the model less).
# darkcovidnet-pretrained and the demo train with it; `audit` advises it.
SHORTCUT_MITIGATION = dict(preprocessing="crop-field", resize_method="crop", jpeg_quality=None)
# One acquisition path for every image: kept whole, padded to a square, through JPEG at quality 90 (in training and
# after). Where COVID-19 and normal share hospitals (`make bench-hospitals`, 3 seeds) it did better than
# SHORTCUT_MITIGATION for a DarkCovidNet model (AUROC 0.682 against 0.592, ahead at each seed) and for
# covid-multisource; covid-multisource trains with it.
ACQUISITION_PATH = dict(preprocessing="none", resize_method="pad", jpeg_quality="90:90")


@dataclass(frozen=True)
class Option:
    """One option of train(). `type` is bool, int, float, str or list (of `item`) coerced the command-line way
    (args.py), or a function value -> value for the options with a syntax of their own (then `accepts` says what
    it takes); `choices` and `range` (low, high; None: unbounded) bound the value; None passes as None (unset)
    when the default is None, unless `type` is a function (it decides)."""
    name: str
    type: object
    default: object
    help: str
    choices: tuple = None
    range: tuple = None
    item: type = int
    accepts: str = None
    positional: bool = False  # source, root, task: train(SOURCE, ROOT, TASK)

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def coerce(self, value):
        "The value as train uses it, or a one-line CxrError naming the option and what it accepts."
        key = self.flag[2:]
        if self.type not in (bool, int, float, str, list): return self.parse(value)
        if value is None and self.default is None: return None
        if self.choices is not None: return as_choice(value, self.choices, key)
        if self.type is bool: return as_bool(value, key)
        low, high = self.range or (None, None)
        if self.type is int:
            out = as_int(value, key, low)
            if high is not None and out > high: raise CxrError(f"{self.flag} must be <= {high}, got {out}")
            return out
        if self.type is float: return as_float(value, key, low, high)
        if self.type is list: return as_list(value, key, self.item)
        return str(value)

    def parse(self, value):
        "An option with a syntax of its own: its function's value; its error names the option when it did not."
        try:
            return self.type(value)
        except CxrError as e:
            if self.flag in str(e): raise
            raise type(e)(f"{self.flag}: {e}") from None

    def describe(self):
        "What the option accepts, in words (for the help; empty for one taken as given)."
        if self.accepts is not None: return self.accepts
        if self.choices is not None: return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool: return "true or false"
        if self.type is list: return f"comma-separated {self.item.__name__}s"
        if self.type not in (int, float): return ""
        low, high = self.range or (None, None)
        noun = "an integer" if self.type is int else "a number"
        if low is not None and high is not None: return f"{noun} in [{low}, {high}]"
        return f"{noun} >= {low}" if low is not None else noun


# ---- options with a syntax of their own ------------------------------------------------------

def base_lr(value):
    "--lr: one base learning rate, a number or auto (ranges per stage go in --plan)."
    lr = parse_lr(value, "lr")
    if isinstance(lr, str) and lr != "auto":
        raise CxrError("--lr is the base learning rate (a number or auto); give lo:hi rates per stage in --plan")
    return lr


def weights_path(value):
    "--weights: a path, user folder expanded (None or empty: none)."
    return str(Path(str(value)).expanduser()) if value else value


def precision_name(value):
    "--precision: auto, fp32, bf16 or fp16; None: what precision.default_precision set (auto by default)."
    return as_choice(str(value or precision_default()).strip().lower(), PRECISIONS, "precision")


def optional_bool(name):
    "A true/false option whose None means 'not given' (the deprecated precision aliases)."
    return lambda value: None if value is None else as_bool(value, name)


def class_weights_option(value):
    "--class-weights as given: None, 'auto', a {class: weight} dict or a list of numbers."
    if value is None or value == "auto" or isinstance(value, dict): return value
    return as_list(value, "class-weights", float)


def cache_option(value):
    "--cache: false, true (the default folder) or a folder."
    if value is None or isinstance(value, bool): return bool(value)
    if str(value).strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return as_bool(value, "cache")
    return str(Path(str(value)).expanduser())


def target_sensitivity_option(value):
    "--target-sensitivity: a number in (0, 1], or none/off/0 for the plain 0.5 threshold."
    if value is None or value is False or str(value).strip().lower() in ("none", "off", "false", "0", "0.0", ""):
        return None
    t = as_float(value, "target-sensitivity", 0.0, 1.0)
    return t if t > 0 else None


def trackers(value):
    "--tracker: a list of tracker names; None: the enclosing tracking_context's (train looks it up)."
    return None if value is None else parse_trackers(value)


def as_given(value):
    "Options checked where they are used (the data loader, the plan, the monitor once the task is known)."
    return value


# ---- the schema ------------------------------------------------------------------------------

O = Option
OPTIONS = {o.name: o for o in [
    O("source", as_given, None, "the dataset: coronahack, folders, siim, phantom ('a+b' joins several), or 'table' "
      "for a saved table CSV", positional=True),
    O("root", as_given, None, "the dataset folder (several sources: comma-separated), or the table CSV",
      positional=True),
    O("task", as_given, None, "the source's task, e.g. 3class, binary, multilabel", positional=True),
    O("arch", check_arch, "resnet18", "resnet18/34/50, vgg16(_bn), densenet121, xrv-* (torchxrayvision) or a timm "
      "model name (tf_efficientnet_lite0: pip weights)", accepts="an architecture name"),
    O("plan", as_given, None, "freeze plan 'WHAT:EPOCHS[@LR],...' (head, layers=A+B, freeze_to=N, all; LR lo:hi) or a "
      "list of {train, epochs, lr}; default: fine_tune for a pretrained body, else fit_one_cycle",
      accepts="a freeze plan"),
    O("epochs", int, 5, "epochs of the default plan (the unfrozen stage)", range=(1, None)),
    O("freeze_epochs", int, 1, "epochs of the default plan's head-only stage (pretrained body)", range=(0, None)),
    O("lr", base_lr, 2e-3, "base learning rate, or auto (lr_find's valley)", accepts="a number or auto"),
    O("lr_find", bool, False, "run lr_find first and save its valley (config.json lr_suggestion)"),
    O("pretrained", bool, True, "start the body from ImageNet weights (fails at once, saying what to do, when they "
      "cannot be had)"),
    O("weights", weights_path, None, "a weights file or a cxr_fast model/run folder whose body to transfer (replaces "
      "pretrained)", accepts="a path"),
    O("hidden", list, None, "the head's hidden layer sizes, e.g. 4300 (fastai's [512] when unset)"),
    O("dropout", float, 0.5, "the head's dropout", range=(0, 1)),
    O("concat_pool", bool, True, "the head pools by concatenating average and max pooling (fastai's)"),
    O("opt", str, "adamw", "adamw (fastai's Adam, decoupled weight decay, wd 0.01), adam (L2, wd 0), sgd "
      "(momentum 0.9, wd 0)", choices=tuple(sorted(OPTIMIZERS))),
    O("wd", float, None, "weight decay (default: the optimizer's)", range=(0, None)),
    O("clip", float, None, "gradient-norm clipping (fastai's GradientClip)", range=(1e-12, None)),
    O("bs", int, 32, "batch size (lowered to the train split's size when larger)", range=(1, None)),
    O("size", int, None, "image size (default: the arch's pretraining size: 224, 512 for xrv-resnet50-res512-all, "
      "240/260 for lite1/2)", range=(16, None)),
    O("aug", str, "cxr", "augmentation preset", choices=tuple(AUG_PRESETS)),
    O("resize_method", str, "squish", "how an image meets the square size", choices=RESIZE_METHODS),
    O("preprocessing", check_preprocessing, "none", "steps joined by '+' before resizing, saved for predict: none, "
      "equalize, standardize, crop-field, blank-border, blank-center", accepts="steps joined by '+'"),
    O("jpeg_quality", jpeg_range, None, "re-encode every image as JPEG at a random quality in LO:HI in training (the "
      "middle of it in valid, test, predict), so compression stops telling sources apart; none: no re-encoding",
      accepts="LO:HI within 1..95, or none"),
    O("balance_sources", bool, False, "sample train rows so that each source weighs the same within each class"),
    O("audit", bool, True, "run the shortcut audit's fast parts on the table; its verdict goes into report.md and "
      "the model card"),
    O("seed", int, 42, "random seed (splits, initialisation, batches)", range=(0, None)),
    O("members", int, 1, "train N models alike (member k from seed SEED+k, the same splits) and average their logits: a "
      "deep ensemble, N times the training time (training/members.py)", range=(1, 16)),
    O("loss", str, "auto", "auto (ce or bce by the task), ce, bce, focal", choices=tuple(LOSSES)),
    O("label_smoothing", float, 0.0, "label smoothing (ce)", range=(0, 1)),
    O("class_weights", class_weights_option, None, "per-class loss weights: auto (inverse train frequency), a list "
      "or {class: weight} (single-label)", accepts="auto, numbers or {class: weight}"),
    O("focal_alpha", float, 1.0, "focal loss alpha", range=(0, None)),
    O("focal_gamma", float, 2.0, "focal loss gamma", range=(0, None)),
    O("calibrate", bool, True, "fit a temperature on valid after training; predict, evaluate and serve apply it"),
    O("target_sensitivity", target_sensitivity_option, 0.95, "binary tasks: the decision threshold is the operating "
      "point chosen on valid for this sensitivity; none: 0.5", accepts="a number in (0, 1], or none"),
    O("tta", bool, False, "evaluate valid and test with test-time augmentation; predict then uses it by default"),
    O("subsample_majority", float, None, "keep this fraction of the majority class's train patients",
      range=(1e-12, 1)),
    O("oversample", bool, False, "weighted sampling: each class weighs the same in training"),
    O("monitor", str, "valid_loss", "the recorder's value for best.pth and early stopping (accuracy_multi for "
      "multi-label tasks)", choices=tuple(dict.fromkeys(metric_names(False) + metric_names(True)))),
    O("save_best", bool, True, "keep the best epoch (by monitor) in checkpoints/best.pth and end on it"),
    O("patience", int, None, "stop a stage after this many epochs without improvement (early stopping)",
      range=(1, None)),
    O("train_bn", bool, True, "BatchNorm layers of frozen parts keep training (fastai's default)"),
    O("bn_stats", str, None, "BatchNorm statistics: train (per batch), frozen (fastai's BnFreeze), fixed (the body's "
      "pretrained ones throughout); default: frozen when train_bn is false, else train", choices=BN_STATS),
    O("frozen_features", bool, False, "a head-only stage computes the frozen body's features once and trains the "
      "head on them (training/features.py): much faster, but that stage has no augmentation and no BatchNorm "
      "training in the body"),
    O("precision", precision_name, None, "auto (bf16 on a CPU with native bf16, fp16 on CUDA, else fp32), fp32, bf16 "
      "or fp16; default: auto, or what the recipe set", accepts="one of " + ", ".join(PRECISIONS)),
    O("mixed_precision", optional_bool("mixed-precision"), None, "deprecated alias of --precision (CUDA: fp16 or "
      "fp32)", accepts="true or false"),
    O("bf16", optional_bool("bf16"), None, "deprecated alias of --precision (bf16 or, on a CPU, fp32)",
      accepts="true or false"),
    O("cache", cache_option, False, "reuse decoded, resized images across epochs and runs (true: the default "
      "folder)", accepts="true, false or a folder"),
    O("export_pkl", bool, False, "also write fastai's export.pkl"),
    O("resume", bool, False, "continue the run in --out from its last finished epoch"),
    O("overwrite", bool, False, "start the run in --out again"),
    O("num_workers", int, None, "image-decoding processes (default: one per spare core)", range=(0, None)),
    O("valid_pct", float, 0.2, "fraction of patients carved out as valid when the source has no valid split",
      range=(0, 0.9)),
    O("test_pct", float, 0.0, "fraction of patients carved out as test when the source has no test split",
      range=(0, 0.9)),
    O("classes", as_given, None, "map or merge classes, e.g. 'COVID-19->Infected,Pneumonia->Infected,Normal'",
      accepts="a class mapping"),
    O("dedup", str, "warn", "near-duplicate images across splits: warn, drop (the later copy) or off",
      choices=DEDUP),
    O("tracker", trackers, None, "csv, tensorboard, mlflow and/or wandb (comma-separated)",
      accepts="tracker names, comma-separated"),
    O("tracker_dir", as_given, None, "the trackers' folder (default: the run folder's parent)", accepts="a folder"),
    O("sync_bn", bool, False, "synchronise BatchNorm across processes when launched as several (CUDA)"),
]}
del O


def resolve_config(c):
    """Every option checked and coerced by its declaration (one it lacks: its default), then what ties options
    together: the size by the arch, --weights instead of --pretrained, the plan from epochs and lr when none is given.
    The same for the command line, Python and a saved config.json; returns the configuration dict."""
    arch = OPTIONS["arch"].coerce(c.get("arch", OPTIONS["arch"].default))
    c = {**c, "size": default_size(arch) if c.get("size") is None else c["size"]}
    out = {**c, **{name: o.coerce(c.get(name, o.default)) for name, o in OPTIONS.items()}}
    if out["resume"] and out["overwrite"]: raise CxrError("--resume and --overwrite exclude each other")
    if out["weights"]: out["pretrained"] = False
    from_weights = out["pretrained"] or bool(out["weights"])  # a body to fine-tune: fastai's fine_tune by default
    out["plan"] = (parse_plan(out["plan"], out["lr"])
                   or default_plan(out["epochs"], out["lr"], out["freeze_epochs"], from_weights))
    return out


def flags_of(settings):
    "train options as the command line spells them ('--preprocessing crop-field --resize-method crop'); unset ones left out."
    return " ".join(f"{OPTIONS[name].flag} {value}" for name, value in settings.items() if value is not None)


def close_options(name, known=()):
    "The options (and `known` names) spelt like `name`."
    return difflib.get_close_matches(name.replace("-", "_"), [*OPTIONS, *known], n=3, cutoff=0.6)


def unknown_option(name, known=()):
    "The one-line error for a keyword that is no option: the close matches among the options (and `known`)."
    close = close_options(name, known)
    flag = "--" + name.replace("_", "-")
    hint = (f"did you mean {' or '.join('--' + c.replace('_', '-') for c in close)}?" if close
            else "`python -m cxr_fast train --help` lists the options")
    return CxrError(f"train has no option {flag}: {hint}")


def check_options(keywords, source_names=()):
    "train() keywords checked as train checks them: each an option (or one of `source_names`) with a value it takes."
    for name, value in keywords.items():
        if name in OPTIONS: OPTIONS[name].coerce(value)
        elif name not in source_names: raise unknown_option(name, source_names)


def check_trial_options(tried, source, source_names=()):
    """tune's search space over train, {name: the values a trial may give it}: a one-line CxrError for a name that
    is neither an option nor one of the source's (`source_names`), with the close matches, or a value refused."""
    for name, values in tried.items():
        if name in source_names: continue
        if name not in OPTIONS or name in ("source", "root"):
            close = close_options(name, source_names)
            hint = (f"did you mean {' or '.join(close)}?" if close else
                    f"they have: {', '.join(sorted({*OPTIONS, *source_names} - {'source', 'root', 'task'}))}")
            raise CxrError(f"--space {name}: neither train nor source {source} has such a parameter; {hint}")
        for value in values:
            try:
                OPTIONS[name].coerce(value)
            except CxrError as e:
                raise type(e)(f"--space {name}: {e}") from None


# ---- what Python and Fire read -----------------------------------------------------------------

def train_signature():
    "train(source, root, task, *, table, out, <every option>, cbs, **source_options), defaults from OPTIONS."
    P = inspect.Parameter
    head = [P(o.name, P.POSITIONAL_OR_KEYWORD, default=o.default) for o in OPTIONS.values() if o.positional]
    keywords = [P(n, P.KEYWORD_ONLY, default=None) for n in ("table", "out")]
    keywords += [P(o.name, P.KEYWORD_ONLY, default=o.default) for o in OPTIONS.values() if not o.positional]
    tail = [P("cbs", P.KEYWORD_ONLY, default=None), P("source_options", P.VAR_KEYWORD)]
    return inspect.Signature(head + keywords + tail)


def options_help(names=None, exclude=(), indent="      "):
    "Google-style 'name: help [what it accepts]' lines, for docstrings (Fire shows each under its flag)."
    chosen = [OPTIONS[n] for n in (names or OPTIONS) if n not in exclude]
    return "\n".join(f"{indent}{o.name}: {o.help}" + (f" [{o.describe()}]" if o.describe() else "") for o in chosen)
