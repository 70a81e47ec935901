"""Data sources: each module turns one dataset layout into rows of the canonical table.

A source module has `TASKS` (task name -> description) and
`load(root, task, seed=..., **options) -> (DataFrame, problems, classes)`.
"""
import importlib

from ...core.errors import DataError

SOURCES = {
    "coronahack": "Kaggle CoronaHack Chest X-Ray dataset, by its Chest_xray_Corona_Metadata.csv",
    "folders": "one folder per class (DarkCovidNet, Khulna), optionally under train/valid/test",
    "siim": "SIIM-FISABIO-RSNA COVID-19 Detection (DICOM, study-level labels)",
    "phantom": "built-in synthetic chest-X-ray-like phantoms (generated when ROOT is empty)",
}


def get_source(name):
    "The source module for `name`; an unknown name lists the valid ones."
    if name not in SOURCES:
        raise DataError(f"unknown source {name!r}; choose one of: {', '.join(SOURCES)}")
    return importlib.import_module(f"{__name__}.{name}")
