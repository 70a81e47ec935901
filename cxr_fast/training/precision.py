"""Numeric precision chosen by the machine: one option, `auto` (default), `fp32`, `bf16` or `fp16`.

    p = resolve_precision("auto")          # a Precision: what runs, on which device, and why
    print(p.line())                        # "precision: fp32 (auto: ...)" for the console
    apply_precision(learn, p)              # the fastai callbacks for training
    with autocast(p): model(x)             # the same choice for inference

`auto` trains in bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX, and oneDNN allowed to use
it), fp16 autocast with a gradient scaler and channels-last on CUDA, and fp32 otherwise; it predicts (and a run
evaluates its splits) in fp32 on any CPU (PREDICT_FP32), so one model file gives one answer. bf16 without
native support is emulated: issue #13 measured a ResNet18 training step 8x slower under bf16 autocast
than fp32 on an AVX2 AMD EPYC, so asking for it there warns once, with the cost measured on the spot
(`measure_bf16_cost`, a small convolution training step timed both ways).

The old options stay as deprecated aliases: `bf16=True` means `bf16`; `bf16=False` means `fp32` on a
CPU; `mixed_precision=True/False` means `fp16`/`fp32` on CUDA (it never applied to a CPU).
"""
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from fastai.callback.channelslast import ChannelsLast as FastaiChannelsLast
from fastai.callback.fp16 import MixedPrecision

from ..core.errors import CxrError
from ..core.machine import cpu_flags
from ..core.scoped import scoped

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which bf16 arithmetic is emulated even on a bf16 CPU
_BF16_ISA_WORDS = ("ALL", "BF16", "AMX", "FP16", "AVX10")
# channels-last on a CPU, by purpose. Measured with `make bench` on a quiet 2-core EPYC (224 px, bare training
# step, bs 32): ResNet18 fp32 26.4 -> 32.0 img/s, EfficientNet-Lite0 fp32 15.0 -> 26.3, bf16 27.1 -> 33.5; with
# oneDNN capped to AVX2 (bs 16) ResNet18 15.8 -> 17.5, Lite0 19.5 -> 27.8; inference faster too (bench/results.md).
CPU_CHANNELS_LAST = {"train": True, "predict": True}


# Why `auto` predicts (and a run evaluates) in fp32 on a CPU, bf16 machine or not: bf16 autocast changes some argmaxes
# (bench/results.md: EfficientNet-Lite0's bf16 forward agreed with fp32 on 0.896 of real images), so the same model
# file would predict differently by machine; 30 CV fold models scored both ways: fp32 ahead at 18 folds, behind at 8
# (docs/results.md). Speed asks for it: --precision bf16, or --engine onnx (fp32, faster on a CPU).
PREDICT_FP32 = ("auto for predict on a CPU: fp32, the model's exact outputs on any machine (bf16 autocast turns some "
                "predictions; --precision bf16 or --engine onnx for speed)")


class PrecisionWarning(UserWarning):
    "A precision choice that will run slower than the alternative."


@dataclass(frozen=True)
class Precision:
    "What runs (`name`: fp32, bf16 or fp16), what was asked (`requested`), on which device, and why."
    name: str
    requested: str
    device: str
    channels_last: bool
    reason: str

    @property
    def dtype(self):
        "The autocast dtype, or None for fp32."
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def as_dict(self):
        "For config.json, the report and benchmark records."
        return asdict(self)

    def line(self):
        "One console line: the choice and why."
        layout = ", channels-last" if self.channels_last else ""
        return f"precision: {self.name}{layout} on {self.device} (asked: {self.requested}; {self.reason})"


def onednn_isa_allows_bf16(env=None):
    "False when ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA caps oneDNN below the native-bf16 instruction sets."
    env = os.environ if env is None else env
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return not cap or any(word in cap for word in _BF16_ISA_WORDS)


def cpu_supports_bf16(flags=None, env=None):
    """Whether this CPU does bf16 arithmetic natively: AVX-512 BF16 or AMX in its flags (default: this
    machine's /proc/cpuinfo), and oneDNN not capped below them by ONEDNN_MAX_CPU_ISA."""
    flags = cpu_flags() if flags is None else set(flags)
    return any(f in flags for f in NATIVE_BF16_FLAGS) and onednn_isa_allows_bf16(env)


def _device_type(device):
    if device is None: return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def decide_precision(requested="auto", device=None, flags=None, env=None, cuda_bf16=None, purpose="train"):
    """The Precision for `requested` on `device` (default: CUDA when available, else the CPU).

    purpose: 'train' or 'predict'; channels-last is on for CUDA, and on a CPU where CPU_CHANNELS_LAST says
    (both purposes: it measured faster for training and predict, see there);
    flags/env: CPU flags and environment to decide on (default: this machine's; tests pass fake ones);
    cuda_bf16: whether the GPU has bf16 (default: torch.cuda.is_bf16_supported()). Raises CxrError for an
    unknown name or fp16 on a CPU; does not warn (resolve_precision does)."""
    requested = str(requested).strip().lower()
    if purpose not in CPU_CHANNELS_LAST: raise ValueError(f"purpose is one of {', '.join(CPU_CHANNELS_LAST)}")
    if requested not in PRECISIONS:
        raise CxrError(f"unknown precision {requested!r}; choose one of: {', '.join(PRECISIONS)}")
    device = _device_type(device)
    if device == "cuda":
        if requested == "fp32": return Precision("fp32", requested, device, False, "fp32 asked for")
        if requested == "bf16":
            ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
            if not ok: raise CxrError("this GPU has no bf16; use --precision fp16 (or auto)")
            return Precision("bf16", requested, device, True, "bf16 autocast asked for; channels-last for tensor cores")
        why = "auto on CUDA: " if requested == "auto" else ""
        return Precision("fp16", requested, device, True,
                         why + "fp16 autocast with a gradient scaler; channels-last for tensor cores")
    if requested == "fp16":
        raise CxrError("fp16 autocast needs a CUDA device; on a CPU choose auto, fp32 or bf16")
    native = cpu_supports_bf16(flags, env)
    cl = CPU_CHANNELS_LAST[purpose]
    if requested == "fp32": return Precision("fp32", requested, device, cl, "fp32 asked for")
    if requested == "auto" and purpose == "predict": return Precision("fp32", requested, device, cl, PREDICT_FP32)
    if requested == "bf16":
        return Precision("bf16", requested, device, cl,
                         "bf16 autocast asked for" + ("" if native else "; this CPU has no native bf16: emulated, slow"))
    if native:
        return Precision("bf16", requested, device, cl,
                         "auto: this CPU has native bf16 (avx512_bf16/amx_bf16), so bf16 autocast")
    if not onednn_isa_allows_bf16(env) and any(f in (cpu_flags() if flags is None else flags) for f in NATIVE_BF16_FLAGS):
        why = "auto: oneDNN is capped below bf16 by ONEDNN_MAX_CPU_ISA, so bf16 would be emulated; fp32"
    else:
        why = "auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16), bf16 would be emulated and slower; fp32"
    return Precision("fp32", requested, device, cl, why)


def precision_from_aliases(precision="auto", bf16=None, mixed_precision=None, device=None):
    """The precision name from the option and the deprecated aliases (see the module docstring).

    Returns (name, note): note says which deprecated option decided, or is ''."""
    precision = precision_default() if precision is None else str(precision).strip().lower()
    device = _device_type(device)
    alias, used = None, []
    if bf16 is not None:
        used.append("--bf16")
        if bf16: alias = "bf16"
        elif device == "cpu": alias = "fp32"
    if mixed_precision is not None and device == "cuda" and alias is None:
        used.append("--mixed-precision")
        alias = "fp16" if mixed_precision else "fp32"
    if alias is None: return precision, ""
    if precision != "auto" and precision != alias:
        raise CxrError(f"--precision {precision} contradicts the deprecated {' '.join(used)}; give --precision only")
    note = f"{' and '.join(used)} (deprecated: use --precision {alias})"
    warnings.warn(f"{note}", DeprecationWarning, stacklevel=3)
    return alias, note


_DEFAULT = ContextVar("cxr_fast_precision", default="auto")


@contextmanager
def default_precision(name="auto"):
    """Within the block, `train`/`predict` calls that give no precision use `name` (how `recipe --precision`
    reaches every run of a recipe)."""
    name = str(name).strip().lower()
    if name not in PRECISIONS: raise CxrError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    with scoped(_DEFAULT, name):
        yield name


def precision_default():
    "The precision name in force where none is given: 'auto', or what `default_precision` set."
    return _DEFAULT.get()


_warned_bf16 = set()


def resolve_precision(precision="auto", bf16=None, mixed_precision=None, device=None, warn=True, purpose="train"):
    """decide_precision after the deprecated aliases; bf16 asked for on a CPU without native bf16 warns once
    per process, with the cost measured here."""
    name, note = precision_from_aliases(precision, bf16, mixed_precision, device)
    p = decide_precision(name, device, purpose=purpose)
    if note: p = Precision(p.name, p.requested, p.device, p.channels_last, f"{p.reason}; from {note}")
    if warn and p.device == "cpu" and p.name == "bf16" and not cpu_supports_bf16() and "bf16" not in _warned_bf16:
        _warned_bf16.add("bf16")
        cost = measure_bf16_cost()
        warnings.warn(f"bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16, or oneDNN capped): a convolution "
                      f"training step measured just now ran {cost:.1f}x slower under bf16 autocast than in fp32 "
                      f"(issue #13 measured a ResNet18 step 8x slower on an AVX2 EPYC); use --precision auto or fp32",
                      PrecisionWarning, stacklevel=2)
    return p


@lru_cache(maxsize=None)
def measure_bf16_cost(reps=3):
    "Seconds of a small conv+BN+ReLU+conv training step under bf16 autocast over fp32, on this CPU (~0.1-0.4 s)."
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(4, 32, 56, 56, generator=gen)

    def seconds(enabled):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = net(x).float().mean()
            loss.backward()
        step()  # warm-up: oneDNN primitive creation
        t0 = time.perf_counter()
        for _ in range(reps): step()
        return (time.perf_counter() - t0) / reps
    fp32 = seconds(False)
    return seconds(True) / fp32


# ---- training: fastai callbacks ---------------------------------------------------------------

class ChannelsLast(FastaiChannelsLast):
    """fastai's ChannelsLast (the model in channels-last memory format) that also converts each 4-D input batch,
    which fastai's leaves as it is; after TTAViews (evaluation/runs.py) stacks its views, so they get it too."""
    order = MixedPrecision.order - 5  # each batch converted before autocast starts (MixedPrecision.before_batch)

    def before_batch(self):
        xb = tuple(x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x
                   for x in self.learn.xb)
        self.learn.xb = xb


class DeviceMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision (autocast + GradScaler) on a chosen device type; fastai's own is CUDA-only, and leaves
    autocast on when a batch is cancelled. With `scaler_state` (GradScaler.state_dict() of a checkpoint), the scaler
    resumes where it stopped."""

    def __init__(self, amp_mode="fp16", device_type="cuda", scaler_state=None, **kwargs):
        super().__init__(amp_mode, **kwargs)
        self.device_type, self.scaler_state = device_type, scaler_state

    def before_fit(self):
        from fastcore.foundation import L
        from torch.amp import GradScaler
        dtype = torch.bfloat16 if self.amp_mode.value == "bf16" else torch.float16
        self.kwargs["enabled"] = dtype == torch.float16  # bf16 has fp32's range: no scaling needed
        self.autocast, self.scales = torch.autocast(self.device_type, dtype=dtype), L()
        self.learn.scaler = GradScaler(self.device_type, **self.kwargs)
        if self.scaler_state: self.learn.scaler.load_state_dict(self.scaler_state)
        self.scaler_state = None  # only the first fit after a resume starts from the saved scale

    def after_cancel_batch(self):
        "Leave autocast when a batch is cancelled (fastai's MixedPrecision stays in it)."
        self.autocast.__exit__(None, None, None)


class CpuBF16Autocast(DeviceMixedPrecision):
    "bf16 autocast on the CPU for the forward pass and the loss (no gradient scaler); backward and the step stay fp32."

    def __init__(self, **kwargs): super().__init__("bf16", "cpu", **kwargs)


def scaler_state(learn):
    "The GradScaler's state_dict while an fp16 fit runs (for a resume checkpoint), else None."
    scaler = getattr(learn, "scaler", None)
    if scaler is None or not scaler.is_enabled(): return None
    return scaler.state_dict()


def set_scaler_state(learn, state):
    "Make the learner's next fit start its GradScaler from `state` (a checkpoint's `scaler_state`)."
    if not state: return
    for cb in learn.cbs:
        if isinstance(cb, DeviceMixedPrecision): cb.scaler_state = state
    if getattr(learn, "scaler", None) is not None: learn.scaler.load_state_dict(state)  # a fit already running


def apply_precision(learn, p):
    "Add the callbacks that make `learn` train at Precision `p` (fp32: none)."
    if p.device == "cuda" and p.name in ("fp16", "bf16"): learn.add_cb(DeviceMixedPrecision(p.name, "cuda"))
    elif p.device == "cpu" and p.name == "bf16": learn.add_cb(CpuBF16Autocast())
    if p.channels_last: learn.add_cb(ChannelsLast())
    return learn


# ---- inference --------------------------------------------------------------------------------

@contextmanager
def evaluating_as_predict(learn):
    """Within the block `learn` computes as `predict --precision auto` does on its device: on a CPU in fp32 (a bf16
    training's autocast off), so a run's reported metrics are what predict gives for its model, on any machine."""
    with learn.removed_cbs([cb for cb in learn.cbs if isinstance(cb, CpuBF16Autocast)]):
        yield learn


def autocast(p):
    "The autocast context for inference at Precision `p` (a no-op for fp32)."
    if p.dtype is None: return nullcontext()
    return torch.autocast(p.device, dtype=p.dtype)
