"""Data: sources -> the canonical table -> images (PNG/JPEG/DICOM), resize, cache -> fastai DataLoaders.

`load_table` and `source_options` (data/load.py) are the entry points; they load on first use, so importing a
submodule such as `cxr_fast.data.images` does not pull in the table and scikit-learn.
"""
import importlib

_EXPORTS = {"load_table": "cxr_fast.data.load", "source_options": "cxr_fast.data.load",
            "typed_source_options": "cxr_fast.data.load"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cxr_fast.data' has no attribute {name!r}")
