"""What machine this is: CPU model and flags, usable cores, the torch thread count, the GPU.

Every speed decision (precision, threads, workers) and every benchmark record reads the machine
from here, so a result says where it was measured and a choice says why it was made.
"""
import os
import platform
from functools import lru_cache
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


@lru_cache(maxsize=None)
def _cpuinfo_text(path=CPUINFO):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo=None):
    "The CPU feature flags (a set of names, e.g. 'avx2', 'avx512_bf16', 'amx_bf16') from /proc/cpuinfo text."
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"): return set(value.split())
    return set()


def cpu_model(cpuinfo=None):
    "The CPU's model name, e.g. 'AMD EPYC' (platform.processor() where /proc/cpuinfo is missing)."
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name": return value.strip()
    return platform.processor() or platform.machine()


def _cgroup_cpu_limit():
    "The CPU quota of this process's cgroup in cores (cgroup v2 cpu.max / v1 cfs), or None when unlimited."
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max": return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0: return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def usable_cores():
    "Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def default_workers(reserve=0, per_core=1, cap=4):
    """Decoding workers (processes or threads) for this machine, the one rule: `per_core` per usable core (affinity
    and cgroup quota, not the host's count), less `reserve` cores kept for the main process, at most `cap`, at
    least 0. DataLoader processes: reserve=1 (on 2 cores a second process only competes with the model's
    threads); decoding threads: reserve=0 (at least 1); I/O-bound file checks: per_core=2, cap=8."""
    return max(0, min(cap, usable_cores() * per_core - reserve))


def default_threads():
    """torch intra-op threads for this machine: OMP_NUM_THREADS when the user set it, else one per usable
    core (oneDNN convolutions scale with cores; more threads than cores only add contention)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0: return int(env)
    return usable_cores()


def set_threads(threads=None):
    """Set torch's intra-op thread count and return it: `threads` when given, OMP_NUM_THREADS when set, else
    torch's count capped at `usable_cores()` (torch counts the host's cores, not a container's quota or
    affinity; a count lowered earlier in this process, e.g. by a notebook or a test, is kept)."""
    import torch
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads is not None: n = max(1, int(threads))
    elif env.isdigit() and int(env) > 0: n = int(env)
    else: n = min(torch.get_num_threads(), usable_cores())
    if torch.get_num_threads() != n: torch.set_num_threads(n)
    return torch.get_num_threads()


def gpu_name():
    "The first CUDA device's name, or None."
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# flags that matter for speed decisions; the full list is kept as well
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
               "avx512_fp16", "amx_tile")


def machine_info(**extra):
    """A JSON-able record of this machine for benchmark results: CPU model, speed-relevant flags (and all
    flags), cores, torch/fastai versions, torch threads, oneDNN ISA cap, GPU; `extra` (workers, precision,
    shared=True, ...) is merged in."""
    import torch
    flags = cpu_flags()
    info = {"cpu_model": cpu_model(), "cpu_flags_speed": [f for f in SPEED_FLAGS if f in flags],
            "cpu_flags": sorted(flags), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "cores": usable_cores(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
            "gpu": gpu_name(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        import fastai
        info["fastai"] = fastai.__version__
    except ImportError:
        pass
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {**info, **extra}
