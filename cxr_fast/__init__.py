"""cxr_fast: a fastai rapid-experiment toolkit for chest X-ray classification.

In a notebook:

    import cxr_fast
    table = cxr_fast.load_table("coronahack", "/kaggle/input/coronahack-chest-xraydataset", "3class")
    metrics = cxr_fast.train("coronahack", "/kaggle/input/...", task="3class", arch="resnet18", out="runs/r18")
    model = cxr_fast.load_model("runs/r18/model"); preds = model.predict(["x.jpeg"])

Heavy modules (torch, fastai) load on first use of a name that needs them.
"""
import importlib

from .version import __version__

_EXPORTS = {
    "load_table": "cxr_fast.data", "build_table": "cxr_fast.table", "read_table": "cxr_fast.table",
    "write_table": "cxr_fast.table", "summarize": "cxr_fast.table", "concat_tables": "cxr_fast.table",
    "load_image": "cxr_fast.images", "make_phantoms": "cxr_fast.sources.phantom",
    "get_dls": "cxr_fast.blocks", "cxr_datablock": "cxr_fast.blocks",
    "build_model": "cxr_fast.models", "ARCHS": "cxr_fast.models",
    "FocalLoss": "cxr_fast.losses", "FocalLossMultiLabel": "cxr_fast.losses",
    "train": "cxr_fast.training", "cxr_learner": "cxr_fast.training",
    "evaluate": "cxr_fast.evaluation", "compare": "cxr_fast.evaluation", "audit": "cxr_fast.shortcuts.core",
    "load_model": "cxr_fast.inference", "save_model_dir": "cxr_fast.modelio",
    "predict": "cxr_fast.inference", "Predictor": "cxr_fast.inference",
    "CxrError": "cxr_fast.errors", "DataError": "cxr_fast.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr_fast' has no attribute {name!r}")
