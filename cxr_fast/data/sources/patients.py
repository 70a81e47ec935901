"""Patient ids from file names (Kermany, NIH patterns), for the sources whose layouts carry no patient column."""
import re
from pathlib import Path

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
