"""JSON values and files: one converter from numpy/torch values to plain JSON, atomic writes."""
import json
import os
import threading
from pathlib import Path

import numpy as np


def write_atomic(path, write):
    "Write a file via a temporary sibling and rename, so a reader never sees half a file."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer thread
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()
    return path


def jsonable(obj):
    "Plain JSON values: numpy and torch scalars and arrays as numbers and lists, NaN/inf -> None, other objects -> str."
    if isinstance(obj, dict): return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)): return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"): return jsonable(obj.tolist())  # numpy and torch, scalars and arrays
    if isinstance(obj, float): return obj if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)): return obj
    return str(obj)


def write_json(path, obj):
    "Write JSON atomically."
    return write_atomic(path, lambda p: p.write_text(json.dumps(jsonable(obj), indent=1, default=str)))


def read_json(path):
    "A JSON file's content, or None when it is absent."
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None
