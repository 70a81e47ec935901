"""The search space of `tune` (`--space`): parsing it, inline or from a YAML/JSON file, and checking it.

The syntax is in tune.py's docstring (what `tune --help` prints). `parse_space` turns a dict, a file or the inline
text into {name: Param}; a Param checks its range and suggests its value to an Optuna trial (this module needs no
Optuna: tune.py runs the trials).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.args import as_bool, as_float
from ..core.errors import CxrError


@dataclass
class Param:
    "One dimension of the search space."
    name: str
    kind: str                      # float, int, categorical, fixed
    low: float = None
    high: float = None
    log: bool = False
    step: float = None
    choices: list = field(default_factory=list)

    def suggest(self, trial):
        "This parameter's value for an Optuna trial."
        if self.kind == "fixed": return self.choices[0]
        if self.kind == "categorical": return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int": return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                                        log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def example(self):
        "A value inside the space (to check the names and types before the first trial)."
        if self.kind in ("fixed", "categorical"): return self.choices[0]
        return int(self.low) if self.kind == "int" else float(self.low)


def _number(text):
    "A token as int or float when it reads as one, else the string."
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def range_param(name, low, high, log=False, step=None):
    "A float or int range, checked (low < high; log ranges positive)."
    where = f"--space {name}"
    low, high = _number(low), _number(high)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise CxrError(f"{where}: a range needs two numbers, got {low!r}..{high!r}")
    if not low < high: raise CxrError(f"{where}: the range {low}..{high} needs low < high")
    if log and low <= 0: raise CxrError(f"{where}: a log range needs low > 0")
    step = None if step is None else as_float(step, f"space {name} step", min_value=1e-300)
    kind = "int" if _is_int(low) and _is_int(high) and (step is None or float(step).is_integer()) else "float"
    return Param(name, kind, low, high, bool(log), step)


def parse_entry(name, spec):
    "One inline entry's SPEC: LO..HI[:log][:step=S], A|B|C, or VALUE."
    spec = str(spec).strip()
    if ".." in spec and "|" not in spec:
        body, *flags = spec.split(":")
        low, _, high = body.partition("..")
        log, step = False, None
        for flag in flags:
            flag = flag.strip()
            if flag == "log": log = True
            elif flag.startswith("step="): step = flag[5:]
            else: raise CxrError(f"--space {name}: unknown range flag {flag!r}; use :log or :step=S")
        return range_param(name, low, high, log, step)
    if "|" in spec:
        choices = [_number(c) for c in spec.split("|")]
        if any(c == "" for c in choices): raise CxrError(f"--space {name}: an empty choice in {spec!r}")
        return Param(name, "categorical", choices=list(dict.fromkeys(choices)))
    return Param(name, "fixed", choices=[_number(spec)])


def from_mapping(mapping):
    "A space from a dict (YAML/JSON file): {name: {low, high, log, step} | [choices] | value}."
    space = {}
    for name, spec in mapping.items():
        name = str(name).replace("-", "_")
        if isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log", "step", "choices"}
            if unknown: raise CxrError(f"--space {name}: unknown keys {sorted(unknown)}; use low, high, log, step or choices")
            if "choices" in spec: space[name] = Param(name, "categorical", choices=list(spec["choices"]))
            else:
                if "low" not in spec or "high" not in spec: raise CxrError(f"--space {name}: a range needs low and high")
                space[name] = range_param(name, spec["low"], spec["high"], as_bool(spec.get("log", False), "log"),
                                          spec.get("step"))
        elif isinstance(spec, (list, tuple)):
            if not spec: raise CxrError(f"--space {name}: an empty list of choices")
            space[name] = Param(name, "categorical", choices=[_number(c) if isinstance(c, str) else c for c in spec])
        else:
            space[name] = Param(name, "fixed", choices=[spec])
    return space


def read_space_file(path):
    "A YAML or JSON space file as a dict."
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json": data = json.loads(text)
    else:
        try:
            import yaml  # pyyaml, the `tune` extra: only a YAML space file needs it
        except ImportError:
            raise CxrError(f"--space {path}: reading YAML needs pyyaml (pip install pyyaml), or give a .json file") from None
        data = yaml.safe_load(text)
    if isinstance(data, dict) and set(data) == {"space"}: data = data["space"]
    if not isinstance(data, dict): raise CxrError(f"--space {path}: the file must hold a mapping of parameter names")
    return data


def parse_space(value):
    "--space: a dict, a .yaml/.yml/.json file, or inline 'NAME=SPEC; NAME=SPEC' (tune's docstring) -> {name: Param}."
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CxrError("--space is required: e.g. --space 'lr=1e-4..1e-2:log; epochs=1..5; aug=cxr|none'")
    if isinstance(value, dict): space = from_mapping(value)
    elif str(value).lower().endswith((".yaml", ".yml", ".json")):
        if not Path(str(value)).is_file(): raise CxrError(f"--space {value}: file not found")
        space = from_mapping(read_space_file(value))
    else:
        space = {}
        for entry in (e.strip() for e in str(value).split(";")):
            if not entry: continue
            name, sep, spec = entry.partition("=")
            if not sep or not name.strip(): raise CxrError(f"--space entry {entry!r}: write NAME=SPEC (lr=1e-4..1e-2:log)")
            name = name.strip().replace("-", "_")
            space[name] = parse_entry(name, spec)
    if not space: raise CxrError("--space names no parameter")
    return space


def suggest(trial, space):
    "{name: value} for one trial."
    return {name: p.suggest(trial) for name, p in space.items()}


