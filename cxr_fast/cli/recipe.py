"""`recipe`: run a named experiment recipe."""
import json

from ..apps.recipes import format_list, get_recipe, parameter_help, registry, run_recipe
from ..core.args import as_bool


def recipe_command(name=None, list=False, data=None, out=None, quick=False, tracker=None, tracker_dir=None,
                   precision=None, **overrides):
    """Run a named experiment recipe (recipes/NAME.py), or list them.

    python -m cxr_fast recipe --list
    python -m cxr_fast recipe NAME [--data ROOT] [--out DIR] [--quick] [--PARAM VALUE ...]

    Args:
      name: the recipe (see --list); NAME --help lists its parameters and defaults
      list: list the recipes with their description and default data path
      data: the dataset folder (default: the recipe's, under data/)
      out: the output folder (default: the recipe's, runs/NAME)
      quick: smoke mode: tiny images, 1 epoch per stage, a few dozen rows, no ImageNet weights
      tracker, tracker_dir: --tracker csv|tensorboard|mlflow|wandb for every run of the recipe (tracking.py)
      precision: auto (default: chosen by the machine), fp32, bf16 or fp16 for every run of the recipe (precision.py)
      overrides: any parameter of the recipe, e.g. --epochs 3 --lr 1e-4 --pretrained false
    """
    if as_bool(list, "list") or name is None:
        print(format_list(registry()))
        return 0
    recipe = get_recipe(name)
    if "help" in overrides:
        print(parameter_help(recipe, recipe.load()))
        return 0
    given = {**overrides, **{k: v for k, v in (("data", data), ("out", out)) if v is not None}}
    if as_bool(quick, "quick"): given["quick"] = True
    from ..training.distributed import is_main
    from ..training.precision import default_precision, precision_default
    from ..training.tracking import tracking_context
    with tracking_context(tracker=tracker, tracker_dir=tracker_dir), default_precision(precision or precision_default()):
        results = run_recipe(recipe.name, **given)
    if is_main(): print(json.dumps(results, indent=1, default=str))
    return 0
