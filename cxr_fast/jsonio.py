"""JSON values and files: one converter from numpy/torch values to plain JSON, atomic writes."""
import json
from pathlib import Path

import numpy as np

from .table import write_atomic


def jsonable(obj):
    "Plain JSON values: numpy scalars and arrays converted, NaN/inf -> None."
    if isinstance(obj, dict): return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)): return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)): return int(obj)
    if isinstance(obj, (float, np.floating)): return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)): return bool(obj)
    return obj


def write_json(path, obj):
    "Write JSON atomically."
    return write_atomic(path, lambda p: p.write_text(json.dumps(jsonable(obj), indent=1, default=str)))


def read_json(path):
    "A JSON file's content, or None when it is absent."
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None
