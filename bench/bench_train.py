"""One training-throughput case, in its own process (so its peak memory is its own).

    python bench/bench_train.py --case cxr_fast_bf16 --data ../shared/data/darkcovidnet --json out.json

Cases: fastai_plain (ImageDataLoaders.from_folder + vision_learner, fastai's Adam), cxr_fast_fp32 /
cxr_fast_bf16 / cxr_fast_auto (cxr_fast's learner as `train` builds it: its DataBlock with a warm
decoded-image cache, num_workers and threads chosen by the machine, the fused FastAdam, `--precision`),
cxr_fast_fp32_fastai_adam (the same with fastai's per-parameter Adam: the optimizer's share),
bare_fp32 / bare_bf16 / bare_fp32_cl (the training step on ready tensors, torch's Adam: the compute limit;
_cl: channels-last; a _lite0 suffix: EfficientNet-Lite0 instead of ResNet18), and *_data (the data pipeline
alone). Run with ONEDNN_MAX_CPU_ISA=AVX2 in the environment, a bare case measures a CPU without native bf16
(oneDNN limited to AVX2; run_bench's *_avx2).
"""
import argparse
from dataclasses import replace
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

RESNET = "resnet18"
ARCH_SUFFIXES = {"_lite0": "tf_efficientnet_lite0"}  # bare cases: another architecture than RESNET


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    "Images/s over the training batches after the first `skip` (warm-up)."

    def __init__(self, skip=1): self.skip, self.n, self.t0, self.count = skip, 0, None, 0

    def batch(self, bs):
        self.n += 1
        if self.n == self.skip: self.t0 = time.perf_counter()
        elif self.n > self.skip: self.count += bs

    def rate(self): return self.count / (time.perf_counter() - self.t0)


def fastai_timer_cb(timer, max_batches):
    from fastai.callback.core import Callback, CancelFitException

    class TimeBatches(Callback):
        order = 100

        def after_batch(self):
            if not self.training: return
            timer.batch(self.learn.xb[0].shape[0])
            if timer.n >= max_batches: raise CancelFitException()
    return TimeBatches()


def plain_fastai_dls(data, size, bs):
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms
    return ImageDataLoaders.from_folder(data, valid_pct=0.2, seed=42, item_tfms=Resize(size), bs=bs,
                                        batch_tfms=aug_transforms(do_flip=False, max_rotate=10, max_warp=0))


def cxr_fast_dls(data, size, bs, cache_dir, workers=None):
    from cxr_fast.data.blocks import get_dls
    from cxr_fast.data.table import build_table
    table = build_table("folders", data, "folders", valid_pct=0.2, seed=42, dedup="off")
    return get_dls(table, size=size, bs=bs, cache=cache_dir, num_workers=workers)


def warm_cache(dls):
    "Decode every training image once (what the first epoch of a run, or an earlier run, does)."
    t = time.perf_counter()
    for _ in dls.train: pass
    return time.perf_counter() - t


def run_fit(dls, precision, max_batches, plain, opt="fast"):
    "Images/s of fit; returns (rate, precision record). plain: fastai's vision_learner as a notebook makes it."
    from fastai.optimizer import Adam
    from fastai.vision.all import Learner, CrossEntropyLossFlat, accuracy, vision_learner
    from cxr_fast.models.registry import build_model
    from cxr_fast.training.precision import apply_precision, resolve_precision
    from cxr_fast.training.learner import OPTIMIZERS
    timer = Timer()
    p = resolve_precision(precision, device="cpu")
    if plain:
        from torchvision.models import resnet18
        learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    else:
        opt_func, wd = OPTIMIZERS["adamw"] if opt == "fast" else (Adam, 0.01)
        learn = Learner(dls, build_model(RESNET, dls.c), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                        opt_func=opt_func, wd=wd)
    if plain:  # what a notebook runs: fp32, the default memory format, no callbacks of ours
        p = replace(p, name="fp32", channels_last=False, reason="plain fastai: no precision or layout callbacks")
    else: apply_precision(learn, p)
    learn.fit(1, 1e-3, cbs=[fastai_timer_cb(timer, max_batches)])
    return timer.rate(), p.as_dict()


def run_data_only(dls, max_batches):
    timer = Timer()
    for xb, _ in dls.train:
        timer.batch(xb.shape[0])
        if timer.n >= max_batches: break
    return timer.rate()


def run_bare(size, bs, bf16, steps, channels_last=False, arch=RESNET):
    from cxr_fast.models.registry import build_model
    torch.manual_seed(0)
    model = build_model(arch, 3).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 3, (bs,))
    if channels_last: model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    timer = Timer()
    for _ in range(steps + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        timer.batch(bs)
    return timer.rate()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--batches", type=int, default=6, help="timed batches + 1 warm-up")
    p.add_argument("--json", required=True)
    p.add_argument("--workers", type=int, default=None, help="cxr_fast cases: DataLoader workers (default: blocks' choice)")
    p.add_argument("--cache-dir", default=None, help="cxr_fast cases: a decoded-image cache kept across cases (default: a temporary one)")
    a = p.parse_args()
    from cxr_fast.core.machine import machine_info, set_threads
    threads = set_threads()  # capped at the usable cores, as train does
    result = {"case": a.case, "data": a.data, "size": a.size, "bs": a.bs, "threads": threads}
    name, arch = a.case.removesuffix("_avx2"), RESNET
    for suffix, other in ARCH_SUFFIXES.items():
        if name.endswith(suffix): name, arch = name.removesuffix(suffix), other
    result["arch"] = arch
    precision = next((q for q in ("bf16", "auto", "fp32") if f"_{q}" in name), "fp32")
    with tempfile.TemporaryDirectory() as tmp_cache:
        cache_dir = a.cache_dir or tmp_cache
        if name.startswith("bare"):
            result["img_per_s"] = run_bare(a.size, a.bs, precision == "bf16", a.batches, name.endswith("_cl"), arch)
            result["precision"] = {"name": precision, "channels_last": name.endswith("_cl"), "how": "torch.autocast"}
        else:
            plain = name.startswith("fastai")
            dls = plain_fastai_dls(a.data, a.size, a.bs) if plain else cxr_fast_dls(a.data, a.size, a.bs, cache_dir, a.workers)
            result["num_workers"] = dls.train.fake_l.num_workers  # fastai's own attribute reports at least 1
            if name.startswith("cxr_fast"): result["cache_fill_s"] = warm_cache(dls)
            if name.endswith("_data"): result["img_per_s"] = run_data_only(dls, a.batches + 1)
            else:
                result["img_per_s"], result["precision"] = run_fit(
                    dls, precision, a.batches + 1, plain, "fastai" if name.endswith("fastai_adam") else "fast")
                result["optimizer"] = "fastai Adam" if plain or name.endswith("fastai_adam") else "cxr_fast FastAdam (fused)"
    result["peak_rss_mb"] = peak_rss_mb()
    result["machine"] = machine_info(num_workers=result.get("num_workers", 0))
    Path(a.json).write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
