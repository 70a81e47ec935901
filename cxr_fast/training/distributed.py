"""Data-parallel training over several processes with fastai's `DistributedTrainer` (Hugging Face Accelerate).

    accelerate launch --multi_gpu --num_processes 2 -m cxr_fast train SOURCE ROOT --task T --out RUN_DIR ...
    python -m cxr_fast train SOURCE ROOT --task T --out RUN_DIR --distributed 2       # the same, launched for you

One process per GPU, or several CPU processes (gloo backend) on a machine without CUDA (Accelerate calls the
launcher flag `--multi_gpu` either way). Each process holds the whole model and one shard of every batch;
gradients are averaged across processes. What cxr_fast adds to fastai's `DistributedTrainer`:
- gloo: fastai's `DistributedDL` broadcasts the shuffled order as a CUDA tensor (nccl); here it is a CPU
  tensor when the backend is gloo, so CPU processes work;
- `Accelerator(cpu=True)` when CUDA is absent (Accelerate's own default would see no GPU and run one process);
- per-epoch metrics of the whole valid set: fastai gathers every process's predictions (the padding that makes
  the shards equal removed) for an `AccumMetric` (F1); the valid loss and `AvgMetric`s (accuracy), which fastai
  would average per process over the padded shards, are computed here the same way, on the gathered predictions;
- `is_main()`, `main_process_first()`, `barrier()`: the run folder, checkpoints, report and model are written
  by the main process only; the others train, then end while the main process evaluates alone
  (`main_process_alone`: fastai's gathers, which read WORLD_SIZE, are off);
- `unwrap(model)`: the plain module inside DistributedDataParallel, so checkpoints keep torchvision's keys.
BatchNorm is synchronised across processes with `sync_bn=True` (`nn.SyncBatchNorm`; CUDA only: with gloo on
CPU PyTorch's SyncBatchNorm cannot run, and asking for it there is an error).
"""
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager

import torch

from ..core.args import as_bool, as_int
from ..core.errors import CxrError

INSTALL_HINT = "distributed training needs Hugging Face Accelerate: pip install 'cxr_fast[distributed]'"


def world_size():
    "How many processes train together (1 when not launched by accelerate/torchrun)."
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank():
    "This process's global rank (0 when not distributed)."
    return int(os.environ.get("RANK", "0") or 0)


def is_distributed():
    "True inside a launch of two or more processes."
    return world_size() > 1


def is_main():
    "True in the process that writes files (rank 0, or the only process)."
    return rank() == 0


def _require_accelerate():
    try:
        import accelerate  # noqa: F401  (the `distributed` extra: only a launch of several processes needs it)
    except ImportError:
        raise CxrError(INSTALL_HINT) from None


def state():
    """Accelerate's process state, set up once per process (the process group; on CUDA, this process's GPU as
    the current device, so DataLoaders built afterwards land on it). CPU processes use gloo."""
    _require_accelerate()
    from accelerate import PartialState  # the `distributed` extra (checked just above)
    return PartialState(cpu=not torch.cuda.is_available())


def setup():
    "Join the process group when launched as several processes (before DataLoaders are built); the world size."
    if is_distributed(): state()
    return world_size()


def barrier():
    "Wait for every process (a no-op in one process)."
    if is_distributed() and torch.distributed.is_initialized(): torch.distributed.barrier()


@contextmanager
def main_process_first():
    "The main process runs the block first (builds the table, fills the caches), then the others."
    if not is_distributed():
        yield
        return
    with state().main_process_first():
        yield


@contextmanager
def main_process_alone():
    """The main process works on its own inside the block (evaluation, report, model dir) while the others have
    finished: fastai decides whether to gather predictions across processes from WORLD_SIZE, so it reads 1 here."""
    if not is_distributed():
        yield
        return
    saved = os.environ["WORLD_SIZE"]
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        os.environ["WORLD_SIZE"] = saved


def unwrap(model):
    "The module inside DistributedDataParallel (or the model itself)."
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def broadcast_object(obj, src=0):
    "`obj` from process `src`, in every process (the main process's decision, e.g. an lr_find suggestion)."
    if not (is_distributed() and torch.distributed.is_initialized()): return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def trainer_callbacks(sync_bn=False):
    "[the data-parallel callback] inside a launch of several processes, else []."
    if not is_distributed(): return []
    if sync_bn and not torch.cuda.is_available():
        raise CxrError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU (gloo); leave it off on CPU")
    state()
    return [data_parallel_trainer(sync_bn)]


def data_parallel_trainer(sync_bn=False):
    "fastai's DistributedTrainer with gloo-safe DataLoaders and Accelerator(cpu=True) when CUDA is absent."
    _require_accelerate()
    from .data_parallel import DataParallelTrainer  # imports fastai.distributed, hence accelerate (checked above)
    return DataParallelTrainer(sync_bn=sync_bn, cpu=not torch.cuda.is_available())


# ---- launching -------------------------------------------------------------------------------

def launch_argv(argv, num_processes, python=sys.executable):
    """The `accelerate launch` command that runs `python -m cxr_fast ARGV...` in `num_processes` processes
    (`--multi_gpu`: Accelerate's flag for several local processes, GPUs or, without CUDA, CPU processes)."""
    return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cxr_fast", *argv]


def num_processes_option(value):
    "--distributed N (N >= 2), or true: one process per GPU (at least 2), or 2 CPU processes without CUDA."
    if value is None or value is False: return 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
        if not as_bool(value, "distributed"): return 0
        value = True
    if value is True: return max(2, torch.cuda.device_count())
    n = as_int(value, "distributed", min_value=1)
    return 0 if n == 1 else n


def relaunch(argv, num_processes):
    """Run `python -m cxr_fast ARGV` (with --distributed removed) under `accelerate launch`; its exit status.
    Inside a launch already (WORLD_SIZE set) nothing is relaunched: the caller trains in this process."""
    _require_accelerate()
    command = launch_argv(strip_option(argv, "distributed"), num_processes)
    print("launching:", " ".join(shlex.quote(c) for c in command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(command, env=env)


def strip_option(argv, name):
    "argv without `--name VALUE`, `--name=VALUE` (dashes or underscores in the name)."
    names = {f"--{name}", f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"}
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in names:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        if any(a.startswith(n + "=") for n in names): continue
        out.append(a)
    return out


def plain_dl(dl):
    "The DataLoader inside fastai's DistributedDL (whose random state decides the shuffle), or `dl` itself."
    wrapper = getattr(sys.modules.get("fastai.distributed"), "DistributedDL", None)
    return dl.dl if wrapper is not None and isinstance(dl, wrapper) else dl
