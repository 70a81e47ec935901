"""The learner: `cxr_learner` (a fastai Learner for a registry architecture, its body frozen when it starts from
pretrained weights) and `build_learner` (DataLoaders, loss, optimizer, precision for a resolved configuration).

BatchNorm statistics (bn_stats) and the optimizers train may name are declared here; options.py reads them.
"""
from functools import partial

from fastai.callback.training import BnFreeze, GradientClip
from fastai.learner import Learner
from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
from fastai.optimizer import SGD
from fastai.torch_core import TensorMultiCategory, set_seed
from fastcore.meta import delegates

from . import distributed
from ..core.args import as_choice
from ..core.errors import DataError
from ..data.blocks import get_dls
from ..data.labels import is_multilabel
from ..models.registry import build_model, default_head, splitter_for
from ..models.weights import init_weights
from .callbacks import BodyBnStats
from .imbalance import sampling_weights
from .losses import make_loss
from .optim import FastAdam
from .precision import apply_precision, resolve_precision
from .progress import configure_progress

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


