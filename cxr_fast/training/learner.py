"""Training: the learner builder, the configuration, the run folder, `train` and its command.

    python -m cxr_fast train phantom data/phantom --task 3class --arch resnet18 --out runs/r18 \\
        --plan "head:2@1e-3,layers=conv1+layer1+layer3:2@1e-3,all:2@1e-5:1e-3"

The freeze-plan language is in plans.py; checkpoints and `--resume` in checkpoints.py.

RUN_DIR gets config.json, history.csv (one row per epoch, all stages, `stage` and `trains` columns),
table.csv/.json, checkpoints/{last,best}.pth, metrics.json/report.md/plots (evaluation.py) and model/.
"""
import hashlib
import json
from collections import Counter
from functools import partial
from pathlib import Path

import torch
from fastai.callback.core import Callback, TrainEvalCallback
from fastai.callback.training import BnFreeze, GradientClip
from fastai.learner import Learner
from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
from fastai.optimizer import SGD
from fastai.torch_core import TensorMultiCategory, set_seed
from fastai.vision.all import imagenet_stats
from fastcore.meta import delegates
from torch import nn

from . import distributed, tracking
from ..evaluation import runs as evaluation
from ..cli.args import as_bool, as_choice, as_float, as_int, as_list
from ..data.blocks import AUG_PRESETS, get_dls
from ..evaluation.card import data_facts, describe_provenance
from .checkpoints import (BestModel, EarlyStop, ResumeRecorder, RunCheckpoint, check_resume, load_last,
                          next_position, resume_hook)
from ..data.load import load_table, typed_source_options
from ..core.errors import CxrError, DataError
from ..data.images import check_preprocessing, jpeg_range
from ..core.jsonio import read_json
from .losses import LOSSES, inverse_frequency_weights, make_loss, resolve_loss_name
from ..models.folder import save_model_dir
from ..models.registry import build_model, check_arch, default_head, default_size, input_spec, splitter_for
from .plans import check_plan, default_plan, fit_stage, lr_uses_auto, parse_lr, parse_plan
from ..core.machine import set_threads
from .optim import FastAdam
from .precision import PRECISIONS, apply_precision, precision_default, resolve_precision
from .progress import configure_progress
from ..data.resize import RESIZE_METHODS
from ..data.labels import classes_of, is_multilabel, label_strings, subsample_class
from ..data.table import summarize, validate_table, write_table
from ..core.jsonio import write_atomic
from ..core.version import __version__
from ..models.weights import ensure_pretrained_available, init_weights

OPTIMIZERS = {  # name -> fastai optimizer; weight decay default when --wd is not given
    "adamw": (FastAdam, 0.01),                             # fastai's Adam (decoupled weight decay), fused step
    "adam": (partial(FastAdam, decouple_wd=False), 0.0),  # Adam, weight decay as L2 added to the gradient
    "sgd": (partial(SGD, mom=0.9), 0.0),                  # SGD with momentum 0.9
}


# ---- the learner -----------------------------------------------------------------------------

def default_metrics(multilabel):
    "accuracy and macro F1 (fastai's), for the task kind."
    if multilabel: return [accuracy_multi, F1ScoreMulti(average="macro")]
    return [accuracy, F1Score(average="macro")]


def metric_names(multilabel):
    "What `--monitor` may name for a task kind (the recorder's column names)."
    return ["valid_loss", "train_loss", "accuracy_multi" if multilabel else "accuracy", "f1_score"]


BN_STATS = ("train", "frozen", "fixed")


class BodyBnStats(Callback):
    """bn_stats='fixed': the body's BatchNorm layers normalise with their pretrained running statistics in every
    stage (eval mode), unfrozen ones too; their weights train where the body is unfrozen. With fastai's BnFreeze
    ('frozen'), unfreezing switches the body to the statistics of each small batch and the head, trained on the
    other features, saw the demo's training loss jump (0.65 -> 2.80 at lr 2e-4; 'fixed': 0.65 -> 0.35). Only for
    gentle fine-tunes: at lr 2e-3 on the top groups, the unfrozen stage diverged on DarkCovidNet (valid accuracy to
    0.11, one class, in fp32 and bf16) where 'frozen' and 'train' did not. The head's BatchNorm trains."""
    order = TrainEvalCallback.order + 1  # after fastai has put the model in train mode

    def before_train(self):
        for m in self.learn.model[0].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm): m.eval()


@delegates(Learner.__init__)
def cxr_learner(dls, arch="resnet18", head=None, pretrained=True, weights=None, loss_func=None, metrics=None,
                bn_stats=None, **kwargs):
    """A fastai Learner for `arch` (models.build_model + splitter_for): body frozen when it starts from
    pretrained weights (`pretrained`, see weights.py) or from `weights` (a weights file, or a cxr_fast model/run
    dir to transfer from). `learn.start_weights` records where the body's weights came from.
    bn_stats: how BatchNorm running statistics behave: 'train' (they follow each batch: fastai's default),
    'frozen' (frozen layers keep theirs: fastai's BnFreeze), 'fixed' (the body keeps its pretrained ones in every
    stage: BodyBnStats); None: 'frozen' when train_bn=False, else 'train' (fastai's usual pairing)."""
    multilabel = (is_multilabel(dls.table) if hasattr(dls, "table")
                  else isinstance(dls.train_ds[0][1], TensorMultiCategory))
    model = build_model(arch, dls.c, head or default_head())
    start_weights = init_weights(model, arch, pretrained=pretrained, weights=weights)
    learn = Learner(dls, model, loss_func=loss_func or make_loss("auto", multilabel),
                    metrics=default_metrics(multilabel) if metrics is None else metrics,
                    splitter=splitter_for(arch), **kwargs)
    learn.start_weights = start_weights
    bn_stats = as_choice(bn_stats or ("train" if kwargs.get("train_bn", True) else "frozen"), BN_STATS, "bn-stats")
    if bn_stats == "frozen": learn.add_cb(BnFreeze())
    if bn_stats == "fixed": learn.add_cb(BodyBnStats())
    configure_progress(learn)  # one line per epoch when stdout is not a terminal (a log file, CI)
    if pretrained or weights: learn.freeze()
    return learn


# ---- data: imbalance -------------------------------------------------------------------------

def subsample_majority_train(table, fraction, seed=42):
    "Keep `fraction` of the majority class's train patients (labels.subsample_class); valid and test untouched."
    table = table.reset_index(drop=True)
    train = table[table["split"] == "train"]
    majority = label_strings(train).value_counts().idxmax()
    kept = subsample_class(train, majority, fraction, seed)
    out = table[(table["split"] != "train") | table.index.isin(kept.index)].reset_index(drop=True)
    out.attrs = {**table.attrs, "subsampled": {"class": majority, "fraction": fraction}}
    return out


def sampling_weights(table, by_class=True, by_source=False):
    """Sampling weights, one per train row (in table order, as `blocks.get_dls(weights=)` takes them), or None
    when neither is asked for. by_class: inverse to the frequency of the row's class in train (multi-label: of its
    label combination); by_source: each source weighs the same within a class (a class's rows of a source share
    1 / (that count x the class's number of sources)), so that which source an image came from tells less."""
    if not (by_class or by_source): return None
    train = table[table["split"] == "train"]
    labels = label_strings(train)
    class_size = labels.map(labels.value_counts()).astype(float)
    weights = 1.0 / class_size if by_class else class_size.map(lambda _: 1.0)
    if by_source:
        pair = labels + "\x00" + train["source"].astype(str)
        per_pair = pair.map(pair.value_counts()).astype(float)
        sources_per_class = labels.map(train.groupby(labels)["source"].nunique()).astype(float)
        weights = weights * class_size / (per_pair * sources_per_class)  # a class keeps its total weight
    return weights.to_numpy(dtype=float)


def class_weight_values(table, class_weights):
    "Per-class loss weights in vocabulary order: 'auto' (inverse train frequency, mean 1), a list or {class: w}."
    if class_weights is None: return None
    classes = classes_of(table)
    if class_weights == "auto":
        if is_multilabel(table): raise CxrError("--class-weights applies to single-label tasks only")
        counts = table.loc[table["split"] == "train", "label"].value_counts().reindex(classes, fill_value=0)
        return [round(float(w), 6) for w in inverse_frequency_weights(counts.tolist())]
    if isinstance(class_weights, dict):
        unknown = set(class_weights) - set(classes)
        if unknown: raise CxrError(f"--class-weights names {sorted(unknown)}, not among the classes {classes}")
        return [float(class_weights.get(c, 1.0)) for c in classes]
    values = as_list(class_weights, "class-weights", float)
    if len(values) != len(classes):
        raise CxrError(f"--class-weights needs {len(classes)} numbers (for {', '.join(classes)}) or 'auto'")
    return values


def table_sha1(table):
    "A digest of what a run trains and evaluates on (paths, splits, labels), to refuse resuming on other data."
    cols = ["path", "split", *(classes_of(table) if is_multilabel(table) else ["label"])]
    return hashlib.sha1(table[cols].to_csv(index=False).encode()).hexdigest()


def run_plan(learn, plan, run_dir, config, ckpt=None, cbs=None):
    "Fit every stage of the plan from where `ckpt` left off (checkpoints/best.pth kept when config['save_best'])."
    suggestion = config.get("lr_suggestion")
    history = list(ckpt["history"]) if ckpt else []
    main = distributed.is_main()  # only the main process of a distributed run writes checkpoints and history
    best_file = Path(run_dir) / "checkpoints" / "best.pth"
    best = BestModel(config["monitor"], best_file) if config["save_best"] and main else None
    if best is not None and ckpt is not None and ckpt["best"] is not None: best.best = ckpt["best"]
    first_stage, first_epoch = next_position(ckpt)
    for i, stage in enumerate(plan):
        if i < first_stage: continue
        resumed = ckpt is not None and i == first_stage
        mid_stage = resumed and first_epoch > 0
        early = (EarlyStop(config["monitor"], config["patience"], ckpt["early"] if mid_stage else None)
                 if config["patience"] else None)
        checkpoint = RunCheckpoint(run_dir, i, stage, history, best, early)
        recorder = [ResumeRecorder(ckpt["smooth_loss"])] if mid_stage else []
        checkpoints = [checkpoint] if main else []
        stage_cbs = [c for c in (best, early) if c is not None] + list(cbs or []) + checkpoints + recorder
        fit_stage(learn, stage, suggestion, stage_cbs, start_epoch=first_epoch if mid_stage else 0,
                  before_fit=resume_hook(learn, ckpt, mid_stage) if resumed else None)
    if ckpt is not None and first_stage >= len(plan): learn.model.load_state_dict(ckpt["model"])


# ---- configuration and the run folder --------------------------------------------------------

def resolve_config(c):
    "Check and coerce every option (the same for the CLI and Python); returns the configuration dict."
    check_arch(c["arch"])
    c = {**c, "size": default_size(c["arch"]) if c["size"] is None else c["size"]}
    out = {**c}
    for key in ("pretrained", "lr_find", "oversample", "save_best", "train_bn", "export_pkl", "resume", "overwrite",
                "concat_pool", "tta", "balance_sources", "audit"):
        out[key] = as_bool(c[key], key.replace("_", "-"))
    for key in ("mixed_precision", "bf16"):  # deprecated aliases of --precision (precision.precision_from_aliases)
        out[key] = None if c[key] is None else as_bool(c[key], key.replace("_", "-"))
    out["precision"] = as_choice(str(c["precision"] or precision_default()).strip().lower(), PRECISIONS, "precision")
    for key, low in (("epochs", 1), ("freeze_epochs", 0), ("bs", 1), ("size", 16), ("seed", 0)):
        out[key] = as_int(c[key], key.replace("_", "-"), low)
    for key in ("patience", "num_workers"):
        out[key] = None if c[key] is None else as_int(c[key], key.replace("_", "-"), 1 if key == "patience" else 0)
    for key, low, high in (("dropout", 0, 1), ("label_smoothing", 0, 1), ("focal_alpha", 0, None),
                           ("focal_gamma", 0, None), ("valid_pct", 0, 0.9), ("test_pct", 0, 0.9)):
        out[key] = as_float(c[key], key.replace("_", "-"), low, high)
    for key, low, high in (("wd", 0, None), ("clip", 1e-12, None), ("subsample_majority", 1e-12, 1)):
        out[key] = None if c[key] is None else as_float(c[key], key.replace("_", "-"), low, high)
    out["hidden"] = None if c["hidden"] is None else as_list(c["hidden"], "hidden", int)
    out["opt"] = as_choice(c["opt"], OPTIMIZERS, "opt")
    out["bn_stats"] = None if c["bn_stats"] is None else as_choice(c["bn_stats"], BN_STATS, "bn-stats")
    out["loss"] = as_choice(c["loss"], LOSSES, "loss")
    out["aug"] = as_choice(c["aug"], AUG_PRESETS, "aug")
    out["resize_method"] = as_choice(c["resize_method"], RESIZE_METHODS, "resize-method")
    out["preprocessing"] = check_preprocessing(c["preprocessing"])
    out["jpeg_quality"] = jpeg_range(c["jpeg_quality"])
    out["class_weights"] = class_weights_option(c["class_weights"])
    out["cache"] = cache_option(c["cache"])
    if out["resume"] and out["overwrite"]: raise CxrError("--resume and --overwrite exclude each other")
    if c["weights"]: out["weights"], out["pretrained"] = str(Path(str(c["weights"])).expanduser()), False
    lr = parse_lr(c["lr"], "lr")
    if isinstance(lr, str) and lr != "auto": raise CxrError("--lr is the base learning rate (a number or auto); "
                                                            "give lo:hi rates per stage in --plan")
    out["lr"] = lr
    out["plan"] = (parse_plan(c["plan"], lr)
                   or default_plan(out["epochs"], lr, out["freeze_epochs"], out["pretrained"] or bool(out["weights"])))
    out["monitor"] = str(c["monitor"])
    out["calibrate"] = as_bool(c.get("calibrate", True), "calibrate")
    out["target_sensitivity"] = target_sensitivity_option(c.get("target_sensitivity"))
    return out


def target_sensitivity_option(value):
    "--target-sensitivity: a number in (0, 1], or none/off/0 for the plain 0.5 threshold."
    if value is None or value is False or str(value).strip().lower() in ("none", "off", "false", "0", "0.0", ""):
        return None
    t = as_float(value, "target-sensitivity", 0.0, 1.0)
    if t <= 0: return None
    return t


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


def prepare_run_dir(run_dir, config):
    "The saved configuration when resuming (None for a fresh run); refuses to overwrite a run unasked."
    saved_path = run_dir / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if config["resume"]:
        if saved is not None: check_resume(saved, config, run_dir)
        return saved
    if saved is not None and not config["overwrite"]:
        raise CxrError(f"{run_dir} already holds a run; pass --resume true to continue it, --overwrite true to "
                       f"start it again, or another --out")
    for name in ("checkpoints/last.pth", "checkpoints/best.pth", "history.csv"):
        (run_dir / name).unlink(missing_ok=True)
    return None


def write_config(config, run_dir):
    "config.json: the resolved configuration (atomic)."
    write_atomic(run_dir / "config.json", lambda p: p.write_text(json.dumps(config, indent=1, default=str)))


def get_table(config, table, source_options):
    "The canonical table: the one given, or data.load_table from source/root/task; majority subsampled if asked."
    if table is None:
        if not (config["source"] and config["root"]): raise CxrError("give SOURCE and ROOT (and --task), or table=")
        table = load_table(config["source"], config["root"], config["task"], config["valid_pct"], config["test_pct"],
                           config["seed"], config["classes"], config["dedup"], **source_options)
    else:
        table = validate_table(table.copy())
    if config["subsample_majority"] is not None and config["subsample_majority"] < 1:
        table = subsample_majority_train(table, config["subsample_majority"], config["seed"])
    return table


DROPPED_KINDS = ("missing_file", "unreadable", "not_an_image", "unknown_label")  # table problems that leave a file out


def dropped_line(table, run_dir):
    "One console line: how many files the table left out and where they are listed (None when none was)."
    dropped = [p for p in table.attrs.get("problems", []) if p["kind"] in DROPPED_KINDS]
    if not dropped: return None
    kinds = Counter(p["kind"].replace("_", " ") for p in dropped)
    return (f"left out {len(dropped)} file(s) ({', '.join(f'{k} {n}' for k, n in kinds.items())}): listed in "
            f"{run_dir / 'table.json'} and, at the end of the run, {run_dir / 'report.md'}")


def default_thresholds(classes, multilabel):
    "0.5 per class (multi-label) or for the positive class (binary); none for more classes."
    if multilabel: return {c: 0.5 for c in classes}
    return {"positive": 0.5} if len(classes) == 2 else {}


def audit_summary(run_dir):
    "The shortcut audit's verdict for model.json and the card (shortcuts.fast.summary), when the run has an audit.json."
    saved = read_json(Path(run_dir) / "audit.json") if run_dir is not None else None
    if not (saved and saved.get("verdict")): return None
    from ..apps.audit.fast import summary
    return summary(saved)


def model_meta(config, table, learn, results):
    "model.json for the model dir (modelio.REQUIRED_KEYS and the rest of the DESIGN contract)."
    classes, multilabel = classes_of(table), is_multilabel(table)
    return {"arch": config["arch"], "head": default_head(config["hidden"], config["dropout"], config["concat_pool"]),
            "n_out": int(learn.dls.c), "classes": classes, "task": table.attrs.get("task") or config["task"],
            "multilabel": multilabel, "loss": resolve_loss_name(config["loss"], multilabel),
            "loss_options": {"label_smoothing": config["label_smoothing"], "focal_alpha": config["focal_alpha"],
                             "focal_gamma": config["focal_gamma"], "class_weights": config.get("class_weight_values")},
            "img_size": config["size"], "resize_method": config["resize_method"],
            "preprocessing": config["preprocessing"], "jpeg_quality": config.get("jpeg_quality"), "tta": config["tta"],
            "normalize": {"mean": list(imagenet_stats[0]), "std": list(imagenet_stats[1])},
            "input_adapter": input_spec(config["arch"]), "weights": getattr(learn, "start_weights", None),
            "thresholds": (results or {}).get("thresholds") or default_thresholds(classes, multilabel),
            "data": {"source": table.attrs.get("source") or config["source"], "task": config["task"],
                     "split_method": table.attrs.get("split_method", "as given"),
                     "counts": summarize(table).to_dict(), **data_facts(table)},
            "training": {"pretrained": config["pretrained"], "weights": config["weights"], "plan": config["plan"],
                         "seed": config["seed"], "balance_sources": config.get("balance_sources", False)},
            "calibration": (results or {}).get("calibration") or {"method": "none"},
            "operating_point": (results or {}).get("operating_point"),
            "audit": audit_summary(getattr(learn, "path", None)),
            "metrics": {k: v for k, v in (results or {}).items() if k not in ("thresholds", "calibration",
                                                                              "operating_point")}}


def fit_batch_size(bs, n_train, processes=1):
    """The batch size a run trains with, and a line saying why when it is not `bs`. fastai drops the last incomplete
    training batch, so a batch larger than the train split (per process when distributed: fastai's DistributedDL
    pads every shard to ceil(n / processes)) would mean an epoch without a single optimiser step. A training batch
    needs 2 images: the head's BatchNorm normalises over the batch. Raises DataError when the split has fewer."""
    per_process = -(-int(n_train) // max(1, int(processes)))
    if per_process < 2:
        raise DataError(f"the train split has {n_train} image(s); training needs at least 2 (the head's BatchNorm "
                        f"normalises over a batch): add images, or lower --valid-pct/--test-pct")
    if bs <= per_process: return bs, None
    where = f"{per_process} per process of {processes}" if processes > 1 else f"{n_train} images"
    return per_process, (f"batch size {per_process} (asked for {bs}): the train split has {where}, and fastai drops "
                         f"an incomplete last batch")


def build_learner(config, table, run_dir, cbs=None):
    """DataLoaders + loss + cxr_learner for a resolved configuration (seeded); the batch size fitted to the train
    split (fit_batch_size: config['bs_used'])."""
    set_seed(config["seed"], reproducible=True)
    multilabel = is_multilabel(table)
    n_train = int((table["split"] == "train").sum())
    bs, note = fit_batch_size(config["bs"], n_train, config.get("processes") or distributed.world_size())
    if note and distributed.is_main(): print(note)
    config["bs_used"] = bs
    dls = get_dls(table, size=config["size"], bs=bs, aug=config["aug"], resize_method=config["resize_method"],
                  num_workers=config["num_workers"], seed=config["seed"], cache=config["cache"] or None,
                  preprocessing=config["preprocessing"], jpeg_quality=config.get("jpeg_quality"),
                  weights=sampling_weights(table, config["oversample"], config.get("balance_sources", False)))
    if len(dls.train) == 0: raise DataError(f"no full training batch of {bs} in {n_train} train images")
    loss = make_loss(config["loss"], multilabel, config.get("class_weight_values"), config["label_smoothing"],
                     config["focal_alpha"], config["focal_gamma"])
    opt_func, default_wd = OPTIMIZERS[config["opt"]]
    head = default_head(config["hidden"], config["dropout"], config["concat_pool"])
    learn = cxr_learner(dls, config["arch"], head, config["pretrained"], config["weights"], loss_func=loss,
                        opt_func=opt_func, wd=default_wd if config["wd"] is None else config["wd"],
                        train_bn=config["train_bn"], bn_stats=config["bn_stats"], path=run_dir, model_dir="checkpoints",
                        cbs=cbs)
    if config["clip"]: learn.add_cb(GradientClip(config["clip"]))
    p = resolve_precision(config["precision"], config["bf16"], config["mixed_precision"], device=dls.device or "cpu")
    apply_precision(learn, p)
    config["precision_used"] = p.as_dict()  # the choice and why: config.json, report.md
    print(p.line())
    return learn


def run_fast_audit(table, run_dir):
    """The shortcut audit's fast parts (file facts, sources: headers only) on the training table: RUN_DIR/audit.json
    and audit.md; the verdict goes into report.md and the model card, and is printed."""
    try:
        from ..apps.audit.fast import fast_audit, write_audit
        result = {"subject": f"training table of {run_dir}", **fast_audit(table)}
    except Exception as e:  # a diagnostic must not stop training: say so and go on
        print(f"shortcut audit not run: {type(e).__name__}: {e}")
        return None
    write_audit(result, run_dir)
    print(f"shortcut audit ({result['verdict']['level']}): {result['verdict']['text']} ({run_dir / 'audit.md'})")
    return result


def find_lr(learn, config, saved):
    "lr_find's valley when asked for (or when a stage's lr is 'auto'); a resumed run reuses the saved one."
    if saved is not None and saved.get("lr_suggestion") is not None: return saved["lr_suggestion"]
    if not (config["lr_find"] or any(lr_uses_auto(s["lr"]) for s in config["plan"])): return None
    return float(learn.lr_find(show_plot=False).valley)


def train(source=None, root=None, task=None, *, table=None, arch="resnet18", out=None, plan=None, epochs=5,
          freeze_epochs=1, lr=2e-3, lr_find=False, pretrained=True, weights=None, hidden=None, dropout=0.5,
          concat_pool=True, opt="adamw", wd=None, clip=None, bs=32, size=None, aug="cxr", resize_method="squish",
          preprocessing="none", jpeg_quality=None, balance_sources=False, audit=True,
          seed=42, loss="auto", label_smoothing=0.0, class_weights=None, focal_alpha=1.0, focal_gamma=2.0,
          calibrate=True, target_sensitivity=0.95, tta=False,
          subsample_majority=None, oversample=False, monitor="valid_loss", save_best=True, patience=None,
          train_bn=True, bn_stats=None, precision=None, mixed_precision=None, bf16=None, cache=False, export_pkl=False,
          resume=False, overwrite=False, num_workers=None, valid_pct=0.2, test_pct=0.0, classes=None, dedup="warn",
          tracker=None, tracker_dir=None, sync_bn=False, cbs=None, **source_options):
    """Train `arch` on a dataset (SOURCE ROOT --task, or a ready `table`), evaluate it, write RUN_DIR `out`.

    Returns evaluation.evaluate_run's dict ({"valid": {...}, "test": {...}, "thresholds": {...}}) plus "run_dir".

    Args:
      source, root, task: the dataset (data.load_table; several sources joined by '+'); or table=: a canonical table
      arch: resnet18, resnet34, resnet50, vgg16, vgg16_bn, densenet121, xrv-densenet121-res224-all (and the other
        torchxrayvision weights), xrv-resnet50-res512-all or any timm model name (tf_efficientnet_lite0: pip weights)
      out: the run folder
      plan: freeze plan, 'WHAT:EPOCHS[@LR],...' or a list of {train, epochs, lr} dicts (module docstring);
        default: fine_tune(epochs, lr, freeze_epochs) for a pretrained body, else fit_one_cycle(epochs, lr)
      lr: base learning rate, a number or 'auto' (lr_find's valley); lr_find: run lr_find first, save its valley
      pretrained: start the body from ImageNet (fails at once, with what to do, when the weights cannot be had);
        weights: a weights file or a cxr_fast model/run folder whose body to transfer (replaces pretrained)
      hidden, dropout, concat_pool: the head (hidden layer sizes, e.g. [4300]; fastai's [512] when None)
      opt: adamw (fastai's Adam, decoupled weight decay, wd 0.01), adam (L2, wd 0), sgd (momentum .9, wd 0)
      wd: weight decay; clip: gradient-norm clipping (fastai GradientClip)
      bs, size, aug, resize_method, seed: batch size, image size, augmentation preset, squish/pad/crop, seed
        (size: the arch's pretraining size when None: 224, 512 for xrv-resnet50-res512-all, 240/260 for lite1/2)
      preprocessing: a pipeline of steps joined by '+', at full resolution before resizing, saved in model.json so
        predict does the same: none, equalize (histogram equalisation), standardize (1..99th percentile stretch),
        crop-field (the central field only), blank-border (the border outside the central field black),
        blank-center (the border only: the audit's probe); e.g. 'standardize+crop-field'
      jpeg_quality: 'LO:HI' passes every image through JPEG after resizing, at a random quality in [LO, HI] in
        training and the middle of it in valid, test and predict (saved in model.json), so compression stops
        telling sources apart; none: no re-encoding
      balance_sources: sample train rows so that each source weighs the same within each class (several sources
        joined by '+'); with oversample, each class weighs the same too
      audit: run the audit's fast parts (file facts, sources) on the table and put its verdict in report.md and
        the model card (cxr_fast.apps.audit)
      loss: auto (ce or bce), ce, bce, focal (focal_alpha, focal_gamma); label_smoothing (ce);
        class_weights: 'auto' (inverse train frequency), a list or {class: weight} (single-label)
      subsample_majority: keep this fraction of the majority class's train patients; oversample: weighted sampling
      monitor: valid_loss, accuracy(_multi), f1_score: for best.pth (save_best) and early stopping (patience)
      train_bn: BatchNorm layers of frozen parts keep training (fastai's default); bn_stats: train, frozen or fixed
        (see cxr_learner; None: frozen when train_bn is false, else train)
      precision: auto (bf16 autocast on a CPU with native bf16, fp16 + channels-last on CUDA, else fp32), fp32,
        bf16 or fp16 (CUDA); None: auto, or what precision.default_precision set (recipe --precision); the
        choice and why go into config.json, the report and the console (precision.py);
        mixed_precision (CUDA: fp16 or fp32), bf16 (bf16 or, on a CPU, fp32): deprecated aliases
      cache: reuse decoded, resized images across epochs and runs (true: the default folder, or a folder)
      num_workers: image-decoding processes (default: one per spare core); export_pkl: also write export.pkl
      resume: continue the run in `out` from its last finished epoch; overwrite: start a run in `out` again
      valid_pct, test_pct, classes, dedup, **source_options: as for the `table` command
      calibrate: fit a temperature on the valid split after training (calibration.py); model.json keeps it and
        predict, evaluate and serve apply it
      target_sensitivity: binary tasks: the decision threshold is the operating point chosen on valid for this
        sensitivity (saved in model.json, reported with its specificity on test); none: 0.5
      tta: evaluate valid and test on the mean logits of the test-time augmentation views (inference.TTA_VIEWS;
        temperature and thresholds fitted on them); model.json records it and predict then uses TTA by default
      tracker: csv, tensorboard, mlflow and/or wandb (comma-separated; tracking.py); tracker_dir: their folder
        (default: the run folder's parent)
      sync_bn: synchronise BatchNorm across processes when launched as several (CUDA; distributed.py)
      cbs: extra fastai callbacks for every stage
    """
    given = {k: v for k, v in locals().items() if k not in ("table", "cbs", "source_options", "out")}
    if table is not None and (source is not None or root is not None or source_options):
        raise CxrError("give either a table or SOURCE ROOT (with source options), not both")
    if table is not None:
        given.update(source=table.attrs.get("source"), task=table.attrs.get("task") or task)
    options = {k.replace("-", "_"): v for k, v in source_options.items()}
    given["source_options"] = typed_source_options(given["source"], options)  # coerced once, by the loader's defaults
    config = resolve_config(given)
    config["tracker"] = tracking.parse_trackers(tracker) if tracker is not None else tracking.context_tracker()
    config["sync_bn"], config["processes"] = as_bool(sync_bn, "sync-bn"), distributed.setup()
    set_threads()  # torch threads capped at this machine's usable cores (machine.py)
    if config["pretrained"]: ensure_pretrained_available(config["arch"])
    run_dir = Path(out or f"runs/{config['arch']}-{config['task'] or 'table'}").expanduser()
    saved = prepare_run_dir(run_dir, config)
    distributed.barrier()  # every process has checked the run folder before the main one writes to it
    with distributed.main_process_first():  # the main process builds the table (and fills caches) first
        table = get_table(config, table, config["source_options"])
    metric_ok = metric_names(is_multilabel(table))
    as_choice(config["monitor"], metric_ok, "monitor")
    config["table_sha1"] = table_sha1(table)
    if saved is not None and saved.get("table_sha1") not in (None, config["table_sha1"]):
        raise CxrError(f"cannot resume {run_dir}: the data (paths, splits or labels) differ from the run's table.csv")
    config["class_weight_values"] = class_weight_values(table, config["class_weights"])
    config["cxr_fast_version"] = __version__
    if distributed.is_main(): write_table(table, run_dir / "table.csv")
    if distributed.is_main() and (line := dropped_line(table, run_dir)): print(line)
    if distributed.is_main() and config["audit"]: run_fast_audit(table, run_dir)
    learn = build_learner(config, table, run_dir)
    check_plan(learn, config["plan"])
    config["lr_suggestion"] = distributed.broadcast_object(find_lr(learn, config, saved))
    config["start_weights"] = learn.start_weights
    print(f"starting weights: {describe_provenance(learn.start_weights)}")
    if distributed.is_main(): write_config(config, run_dir)
    device = getattr(learn.dls, "device", None) or "cpu"
    ckpt = load_last(run_dir / "checkpoints" / "last.pth", device) if config["resume"] else None
    if ckpt is not None: print(f"resuming {run_dir} after stage {ckpt['stage'] + 1}, epoch {ckpt['epoch'] + 1}")
    hooks = tracking.run_hooks(run_dir, config["tracker"], config["tracker_dir"])  # none in non-main processes
    cbs = [*distributed.trainer_callbacks(config["sync_bn"]), *(cbs or []), *tracking.hook_callbacks(hooks)]
    try:
        run_plan(learn, config["plan"], run_dir, config, ckpt, cbs)
        if not distributed.is_main(): return {"run_dir": str(run_dir), "rank": distributed.rank()}
        with distributed.main_process_alone():  # the other processes have ended: evaluation gathers nothing
            results = finish_run(learn, table, run_dir, config)
    except BaseException as e:
        tracking.close_hooks(hooks, e)
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted: continue with --resume true (from {run_dir / 'checkpoints' / 'last.pth'})")
        raise
    tracking.finish_hooks(hooks, results)
    return results


def finish_run(learn, table, run_dir, config):
    "Load the best weights (if kept), evaluate (evaluation.evaluate_run), write the model dir; the metrics dict."
    best_file = run_dir / "checkpoints" / "best.pth"
    if config["save_best"] and best_file.is_file():
        learn.model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    results = evaluation.evaluate_run(learn, table, run_dir, config=config) or {}
    meta = model_meta(config, table, learn, results)
    save_model_dir(learn.model, run_dir / "model", meta, learn=learn if config["export_pkl"] else None)
    return {**results, "run_dir": str(run_dir)}


# ---- command line ----------------------------------------------------------------------------

def format_summary(results):
    "A few lines: the scalar metrics per split and the run folder."
    lines = []
    for split in ("valid", "test"):
        values = results.get(split) or {}
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars: lines.append(f"{split}: " + "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    lines.append(f"run folder: {results.get('run_dir')}")
    return "\n".join(lines)
