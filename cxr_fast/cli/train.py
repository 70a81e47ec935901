"""`train`: train a model on a dataset and write a run folder. Its options and their help come from
training/options.py, where each is declared once."""
import inspect

from fastcore.meta import delegates

from ..core.errors import CxrError
from ..training.distributed import is_distributed, is_main, num_processes_option, relaunch
from ..training.options import options_help
from ..training.run import train
from ..core.args import to_argv


def format_summary(results):
    "A few lines: the scalar metrics per split and the run folder."
    lines = []
    for split in ("valid", "test"):
        values = results.get(split) or {}
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars: lines.append(f"{split}: " + "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    lines.append(f"run folder: {results.get('run_dir')}")
    return "\n".join(lines)


@delegates(train, keep=True, but=["table", "cbs", "source_options"])
def train_command(source, root, task=None, out=None, distributed=None, **options):
    options = {k.replace("-", "_"): v for k, v in options.items()}
    if "help" in options:  # `train SOURCE ROOT --help`: Fire hands --help to **options
        print(inspect.cleandoc(train_command.__doc__))
        return 0
    if out is None or str(out).strip() == "": raise CxrError("--out RUN_DIR is required")
    if "table" in options or "cbs" in options:
        raise CxrError("--table/--cbs are Python-only; give source 'table' and the CSV as ROOT")
    processes = num_processes_option(distributed)
    if processes > 1 and not is_distributed():  # --distributed N: this command under accelerate launch
        task_words = ["--task", str(task)] if task is not None else []
        argv = ["train", str(source), str(root), *task_words, "--out", str(out)]
        return relaunch(argv + to_argv(options), processes)
    results = train(source, root, task, out=out, **options)
    if is_main(): print(format_summary(results))
    return 0


train_command.__doc__ = f"""Train a model on a dataset, evaluate it on the valid (and test) split, write a run folder.

    python -m cxr_fast train SOURCE ROOT --task TASK --arch ARCH --out RUN_DIR [options]

    Besides the options below, the source's own options (e.g. --balance for coronahack). Each option is declared
    once (cxr_fast/training/options.py); `cxr_fast.train(...)` takes the same ones as keywords.

    Args:
{options_help(["source", "root", "task"])}
      out: the run folder (required)
      distributed: data-parallel over N processes (accelerate launch; GPUs, or CPU processes with gloo)
{options_help(exclude=["source", "root", "task"])}
    """
