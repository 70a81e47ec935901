"""`train`: train a model on a dataset and write a run folder."""
import inspect

from fastcore.meta import delegates

from ..core.errors import CxrError
from ..training import learner
from ..training.distributed import is_distributed, is_main, num_processes_option, relaunch
from ..training.learner import format_summary, train
from .args import to_argv


@delegates(train, keep=True, but=["table", "cbs", "source_options"])
def train_command(source, root, task=None, out=None, **options):
    """Train a model on a dataset, evaluate it on the valid (and test) split, write a run folder.

    python -m cxr_fast train SOURCE ROOT --task TASK --arch ARCH --out RUN_DIR [options]

    Options (see `cxr_fast.training.learner.train` for all): --calibrate true|false (temperature scaling on valid),
    --target-sensitivity 0.95 (binary: the operating point chosen on valid; none: 0.5), --arch, --plan 'head:2@1e-3,all:3@1e-5:1e-3',
    --epochs, --freeze-epochs, --lr (number or auto), --lr-find, --pretrained true|false, --weights PATH,
    --hidden 4300 --dropout 0.5, --opt adamw|adam|sgd, --wd, --clip, --bs, --size, --aug, --resize-method,
    --seed, --preprocessing none|equalize|standardize|crop-field|blank-border (steps joined by '+'),
    --jpeg-quality LO:HI, --balance-sources, --audit true|false, --loss auto|ce|bce|focal, --focal-alpha, --focal-gamma, --label-smoothing, --class-weights auto,
    --subsample-majority 0.5, --oversample, --monitor, --save-best, --patience, --train-bn, --bn-stats train|frozen|fixed,
    --precision auto|fp32|bf16|fp16 (--bf16, --mixed-precision: deprecated aliases), --cache, --export-pkl,
    --resume, --overwrite, --num-workers, --valid-pct, --test-pct, --classes,
    --dedup, and the source's own options (e.g. --balance for coronahack);
    --tracker csv|tensorboard|mlflow|wandb (comma-separated for several), --tracker-dir DIR;
    --distributed N: data-parallel over N processes (accelerate launch; GPUs, or CPU processes with gloo), --sync-bn.
    """
    options = {k.replace("-", "_"): v for k, v in options.items()}
    if "help" in options:  # `train SOURCE ROOT --help`: Fire hands --help to **options
        print(inspect.cleandoc(learner.__doc__) + "\n\n" + inspect.cleandoc(train.__doc__))
        return 0
    if out is None or str(out).strip() == "": raise CxrError("--out RUN_DIR is required")
    if "table" in options or "cbs" in options:
        raise CxrError("--table/--cbs are Python-only; give source 'table' and the CSV as ROOT")
    processes = num_processes_option(options.pop("distributed", None))
    if processes > 1 and not is_distributed():  # --distributed N: this command under accelerate launch
        argv = ["train", str(source), str(root), *(["--task", str(task)] if task is not None else []), "--out", str(out)]
        return relaunch(argv + to_argv(options), processes)
    results = train(source, root, task, out=out, **options)
    if is_main(): print(format_summary(results))
    return 0
