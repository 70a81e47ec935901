"""Data sources: each module turns one dataset layout into rows of the canonical table.

A source module has `TASKS` (task name -> description) and
`load(root, task, seed=..., **options) -> (DataFrame, problems, classes)`.
"""
import importlib
import re
from pathlib import Path

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


_PATIENT_PATTERNS = [
    re.compile(r"^(person\d+)_"),                 # Kermany: person123_bacteria_456
    re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+"),  # Kermany: IM-0128-0001, NORMAL2-IM-0007-0001
    re.compile(r"^(\d{8})_\d{3}$"),                 # NIH ChestX-ray8/14: 00001280_004
]


def patient_from_filename(path):
    "The patient id a file name carries (Kermany, NIH patterns), else the file's stem (one patient per image)."
    stem = Path(path).stem
    for pattern in _PATIENT_PATTERNS:
        m = pattern.match(stem)
        if m: return m.group(1)
    return stem
