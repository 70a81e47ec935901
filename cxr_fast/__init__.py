"""cxr_fast: a fastai rapid-experiment toolkit for chest X-ray classification.

In a notebook:

    import cxr_fast
    table = cxr_fast.load_table("coronahack", "/kaggle/input/coronahack-chest-xraydataset", "3class")
    metrics = cxr_fast.train("coronahack", "/kaggle/input/...", task="3class", arch="resnet18", out="runs/r18")
    model = cxr_fast.load_model("runs/r18/model"); preds = model.predict(["x.jpeg"])

Heavy modules (torch, fastai) load on first use of a name that needs them.
"""
import importlib

from .core.version import __version__

_EXPORTS = {
    "load_table": "cxr_fast.data.load", "build_table": "cxr_fast.data.table", "read_table": "cxr_fast.data.table",
    "write_table": "cxr_fast.data.table", "summarize": "cxr_fast.data.table", "concat_tables": "cxr_fast.data.table",
    "load_image": "cxr_fast.data.images", "make_phantoms": "cxr_fast.data.sources.phantom",
    "get_dls": "cxr_fast.data.blocks", "cxr_datablock": "cxr_fast.data.blocks",
    "build_model": "cxr_fast.models.registry", "ARCHS": "cxr_fast.models.registry",
    "FocalLoss": "cxr_fast.training.losses", "FocalLossMultiLabel": "cxr_fast.training.losses",
    "train": "cxr_fast.training.run", "cxr_learner": "cxr_fast.training.learner",
    "evaluate": "cxr_fast.evaluation.runs", "compare": "cxr_fast.evaluation.runs", "audit": "cxr_fast.apps.audit.core",
    "load_model": "cxr_fast.inference.predictor", "save_model_dir": "cxr_fast.models.folder",
    "predict": "cxr_fast.inference.predictor", "Predictor": "cxr_fast.inference.predictor",
    "CxrError": "cxr_fast.core.errors", "DataError": "cxr_fast.core.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr_fast' has no attribute {name!r}")
