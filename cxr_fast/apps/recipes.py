"""Recipes: one small file per experiment in the repository's `recipes/` folder, run by name.

    python -m cxr_fast recipe --list
    python -m cxr_fast recipe resnet18 --data data/coronahack --out runs/resnet18 --epochs 3
    python -m cxr_fast recipe resnet18 --quick          # smoke mode: tiny images, 1 epoch, a few dozen rows
    make recipe-resnet18 ARGS='--data data/coronahack'

A recipe is `recipes/<name_with_underscores>.py` (run as `<name-with-dashes>`): a module docstring whose
first line describes it, and `run(data=..., out=..., <its configuration>, quick=False)` that goes
data -> learner -> freeze plan -> fit -> report (`training.train`, `evaluation.compare`) and returns a
plain dict of metrics. Its signature is its configuration: every `--option` of `recipe NAME` is one
of its parameters, coerced to the type of the parameter's default. `run_recipe` writes the resolved
arguments and the returned dict to OUT/recipe.json.
"""
import ast
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.args import as_int, as_type_of
from ..data.download import DATASETS, manual_hint
from ..core.errors import CxrError
from ..data.labels import label_strings
from ..evaluation.metrics import HEADLINE
from ..core.jsonio import write_atomic

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
SMOKE = {"size": 32, "bs": 8, "epochs": 1, "rows_per_class": 8}  # quick=True: per (split, class) rows kept
# A recipe's images are decoded once into the disk cache (data/cache.py: ~/.cache/cxr_fast/images, or $CXR_FAST_CACHE)
# and read from it with no decoding worker: on 2 cores a worker only competes with the model's threads. One epoch of
# resnet18's `all` stage on CoronaHack (Lite0, 224 px, bf16, AMD EPYC with avx512_bf16): 3:00 cached vs 3:10 not,
# the same losses; the saving grows with the images' size (a full-size Kaggle download decodes 1-2k px JPEGs).
RECIPE_CACHE = True
RESULT_METRICS = (*HEADLINE, "exact_match")  # the headline metrics, and exact match for a multi-label task


@dataclass
class Recipe:
    "A recipe by name: its file, one-line description and default data path (from its source, no import)."
    name: str
    path: Path
    description: str
    data: str

    def module(self):
        "The recipe's module, imported by file path (once: later calls return the same module)."
        name = f"cxr_fast_recipes.{self.path.stem}"
        if name in sys.modules: return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, self.path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    def load(self):
        "The recipe's `run` function."
        run = getattr(self.module(), "run", None)
        if not callable(run): raise CxrError(f"{self.path} defines no run(...) function")
        return run


# ---- discovery -------------------------------------------------------------------------------

def recipes_dir():
    "The repository's recipes/ folder, or an error saying where it was looked for."
    if not RECIPES_DIR.is_dir():
        raise CxrError(f"no recipes folder at {RECIPES_DIR}: recipes live in the cxr_fast repository; clone it and "
                       f"`pip install -e .` there to run them")
    return RECIPES_DIR


def recipe_module(name):
    "A recipe's module by name (its configuration constants: BEST, TASK_CLASSES...), for the benchmarks."
    return get_recipe(name).module()


def describe(path):
    "A Recipe from a file's source: the docstring's first line and run()'s `data` default."
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    data = ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            for arg, default in zip(args, defaults):
                if arg.arg == "data" and isinstance(default, ast.Constant): data = str(default.value)
    name = Path(path).stem.replace("_", "-")
    description = doc[0].removeprefix(f"{name}: ") if doc else ""
    return Recipe(name, Path(path), description, data)


def registry():
    "{name: Recipe} for every recipes/*.py (files starting with '_' are helpers, not recipes)."
    return {r.name: r for r in map(describe, sorted(recipes_dir().glob("[!_]*.py")))}


def get_recipe(name):
    "The Recipe called `name` (dashes or underscores), or an error listing the recipes."
    recipes = registry()
    key = str(name).replace("_", "-")
    if key not in recipes:
        raise CxrError(f"unknown recipe {name!r}; choose one of: {', '.join(recipes)} (python -m cxr_fast recipe --list)")
    return recipes[key]


def format_list(recipes):
    "The --list text: name, description, default data path."
    width = max((len(n) for n in recipes), default=0)
    lines = [f"{r.name:<{width}}  {r.description}" + (f"  [--data {r.data}]" if r.data else "") for r in recipes.values()]
    return "\n".join(lines + ["", "run one: python -m cxr_fast recipe NAME [--data ROOT] [--out DIR] [--quick] "
                                  "[--PARAM VALUE ...]; NAME --help lists its parameters"])


# ---- arguments -------------------------------------------------------------------------------

def resolve_args(recipe_name, fn, kwargs):
    "kwargs checked against fn's signature (unknown names: one line listing the parameters) and coerced."
    params = named_parameters(fn)
    open_ended = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    out = {}
    for key, value in kwargs.items():
        name = key.replace("-", "_")
        if name not in params and not open_ended:
            raise CxrError(f"recipe {recipe_name} has no parameter --{key}; its parameters are: "
                           + ", ".join("--" + p.replace("_", "-") for p in params))
        out[name] = as_type_of(value, params[name].default, name) if name in params else value
    return out


def named_parameters(fn):
    "fn's named parameters (no *args / **kwargs)."
    return {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def parameter_help(recipe, fn):
    "NAME --help: the recipe's docstring and every parameter with its default (and train's help, for train's)."
    from ..training.options import OPTIONS  # `recipe --list` needs no torch; a recipe's help loads it anyway
    lines = [f"python -m cxr_fast recipe {recipe.name} [--PARAM VALUE ...]", "", inspect.cleandoc(fn.__doc__ or ""), "",
             "parameters (default):"]
    lines += [f"  --{n.replace('_', '-'):<22} {p.default!r}" + (f"  train: {OPTIONS[n].help}" if n in OPTIONS else "")
              for n, p in named_parameters(fn).items()]
    return "\n".join(lines)


# ---- running ---------------------------------------------------------------------------------

def run_recipe(name, **kwargs):
    """Run recipe `name` with keyword overrides (checked and coerced as on the command line); returns its dict
    and writes OUT/recipe.json (recipe, arguments, results)."""
    recipe = get_recipe(name)
    fn = recipe.load()
    args = resolve_args(recipe.name, fn, kwargs)
    bound = inspect.signature(fn).bind(**args)
    bound.apply_defaults()
    results = fn(**args)
    out = bound.arguments.get("out")
    from ..training.distributed import is_main
    if out and is_main():
        record = {"recipe": recipe.name, "args": bound.arguments, "results": results}
        write_atomic(Path(out) / "recipe.json", lambda p: p.write_text(json.dumps(record, indent=1, default=str)))
    return results


# ---- helpers the recipes share ---------------------------------------------------------------

def need_data(data, dataset):
    "The data folder as a Path, or a one-line error saying how to get `dataset` (download.DATASETS) there."
    path = Path(str(data)).expanduser()
    if path.exists(): return path
    if DATASETS[dataset][0] == "manual": how = manual_hint(dataset, path)
    else: how = f"get it with `python -m cxr_fast download {dataset}` ({manual_hint(dataset, path)})"
    raise CxrError(f"{path} not found: {how}; or pass --data ROOT")


def binary_source(root):
    "(source, task) of a binary dataset: CoronaHack Normal vs Pneumonia when its metadata CSV is below root, else folders."
    if any(Path(root).rglob("Chest_xray_Corona_Metadata.csv")): return "coronahack", "normal-vs-pneumonia"
    return "folders", "binary"


def cap_table(table, rows_per_class=SMOKE["rows_per_class"], seed=0):
    "At most `rows_per_class` rows per (split, class) (multi-label: per label combination); attrs kept."
    shuffled = table.sample(frac=1, random_state=seed)
    first = shuffled.groupby([shuffled["split"], label_strings(shuffled)], sort=False).cumcount() < rows_per_class
    out = table.loc[sorted(first[first].index)]
    out.attrs = dict(table.attrs)
    return out


def load_data(data, source, task, quick=False, **options):
    "data.load_table(source, data, task, **options), capped to a few dozen rows in smoke mode."
    from ..data.load import load_table
    table = load_table(source, str(data), task, **options)
    return cap_table(table) if quick else table


def fit_options(quick=False, **options):
    """train() keyword arguments, checked by train's options (a wrong name or value fails before any data is read);
    smoke mode makes them tiny: 32 px, batch 8, no ImageNet weights, no workers. Fails at once too when ImageNet
    weights are asked for and cannot be had. Recipes keep decoded, resized images in the image cache unless told
    otherwise (RECIPE_CACHE)."""
    from ..training.options import check_options  # lazy (torch, fastai), as below
    options.setdefault("cache", RECIPE_CACHE)
    check_options(options)
    if quick:
        options.update(size=SMOKE["size"], bs=min(options.get("bs", SMOKE["bs"]), SMOKE["bs"]), pretrained=False,
                       num_workers=0)
    elif options.get("pretrained", True) and options.get("arch"):
        from ..models.weights import ensure_pretrained_available
        ensure_pretrained_available(options["arch"])
    return options


def epochs(quick, *counts):
    "Epoch counts as given, or 1 each in smoke mode (one number in, one number out)."
    out = [SMOKE["epochs"] if quick else as_int(n, "epochs", 1) for n in counts]
    return out[0] if len(out) == 1 else out


def headline(result):
    "The headline metrics of a train() result per split, and its run folder."
    out = {s: {k: result[s][k] for k in RESULT_METRICS if result[s].get(k) is not None}
           for s in ("valid", "test") if result.get(s)}
    return {**out, "run_dir": result.get("run_dir")}


def compare_runs(out, results):
    "evaluation.compare over the runs of `results` -> OUT/comparison.md; returns the file's path as str."
    from ..training.distributed import is_main
    from ..evaluation.runs import compare
    path = Path(out) / "comparison.md"
    if not is_main(): return str(path)  # the main process writes it, from the run folders it wrote
    compare(*[r["run_dir"] for r in results.values()], out=path)
    return str(path)
