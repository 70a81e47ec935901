"""Coerce and check option values (Fire parses command-line values as Python literals; train's option schema,
recipes and tune check theirs with the same functions): the library's one set of value checks, below the CLI."""

from .errors import CxrError

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off", "none"}


def as_bool(value, name):
    "Fire gives `--x=false` as the string 'false' or bool False: accept both."
    if isinstance(value, bool): return value
    if isinstance(value, (int, float)) and value in (0, 1): return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE: return value.strip().lower() in _TRUE
    raise CxrError(f"--{name} must be true or false, got {value!r}")


def as_int(value, name, min_value=None):
    "An integer (Fire already turns '001' into 1); integral floats like 3.0 and digit strings are accepted."
    if isinstance(value, float) and value.is_integer(): value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise CxrError(f"--{name} must be an integer, got {value!r}")
    out = int(str(value).strip())
    if min_value is not None and out < min_value:
        raise CxrError(f"--{name} must be >= {min_value}, got {out}")
    return out


def as_float(value, name, min_value=None, max_value=None):
    "A float within optional bounds."
    try:
        if isinstance(value, bool): raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise CxrError(f"--{name} must be a number, got {value!r}") from None
    if (min_value is not None and out < min_value) or (max_value is not None and out > max_value):
        raise CxrError(f"--{name} must be in [{min_value}, {max_value}], got {out}")
    return out


def as_list(value, name=None, item=str):
    "A list from a Fire tuple/list, a comma-separated string, a single value, or None."
    if value is None or value == "": return []
    if isinstance(value, (list, tuple)): parts = list(value)
    else: parts = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        return [item(p) for p in parts]
    except (TypeError, ValueError):
        raise CxrError(f"--{name} must be a comma-separated list of {item.__name__}, got {value!r}") from None


def to_argv(options):
    "Options as command-line words: --name value (lists comma-joined, booleans true/false, None left out)."
    argv = []
    for key, value in options.items():
        if value is None: continue
        if isinstance(value, bool): value = str(value).lower()
        elif isinstance(value, (list, tuple)): value = ",".join(map(str, value))
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def as_choice(value, choices, name):
    "One of `choices` (case-sensitive), with the valid ones listed on error."
    value = str(value)
    if value not in choices:
        raise CxrError(f"--{name} must be one of {', '.join(sorted(choices))}; got {value!r}")
    return value


def as_type_of(value, default, name):
    "A command-line value as the type of a parameter's default (a None value or a None default: as given)."
    flag = name.replace("_", "-")
    if value is None: return None
    if isinstance(default, bool): return as_bool(value, flag)
    if isinstance(default, int): return as_int(value, flag)
    if isinstance(default, float): return as_float(value, flag)
    if isinstance(default, (list, tuple)): return as_list(value, flag, type(default[0]) if default else str)
    if isinstance(default, str): return str(value)
    return value
