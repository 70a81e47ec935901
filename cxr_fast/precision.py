"""Numeric speed-ups as fastai callbacks: bf16 autocast on CPU, channels-last memory format.

On CUDA, fastai's own `MixedPrecision` (learn.to_fp16()) is the right tool; these cover the CPU,
where bf16 autocast pays off on processors with AVX-512 BF16 or AMX.
"""
import torch
from fastai.callback.core import Callback


def cpu_supports_bf16():
    "Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX) per /proc/cpuinfo."
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class CpuBF16Autocast(Callback):
    "Run the forward pass and the loss under torch.autocast('cpu', bfloat16); backward and the step stay fp32."
    order = 10

    def before_batch(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_loss(self):
        self.autocast.__exit__(None, None, None)

    def after_cancel_batch(self):
        self.autocast.__exit__(None, None, None)

    def after_pred(self):
        if isinstance(self.learn.pred, torch.Tensor): self.learn.pred = self.learn.pred.float()


class ChannelsLast(Callback):
    "Keep the model and each batch in channels-last memory format (faster convolutions in oneDNN/cuDNN)."
    order = 5

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        xb = tuple(x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x
                   for x in self.learn.xb)
        self.learn.xb = xb
