"""Inference speed on CPU, side by side in one run: the torch fp32 forward pass vs cxr_fast predict (torch,
onnxruntime fp32 and int8), for ResNet18 and EfficientNet-Lite0 at 224 px on real images.

    python bench/bench_inference.py [--data ../shared/data/darkcovidnet] [--n 300] [--out bench/results_inference.json]

For each architecture (`--archs`), one process times every mode, interleaved round by round (each mode
sees the same load on a shared machine; best and median of `--repeats` passes are reported):
  torch_fp32_forward   the model's batched fp32 forward pass on ready, normalised tensors (NCHW): the reference
  torch_bf16_forward   the same under bf16 autocast, channels-last
  torch_int8_forward   torch's own int8 path (FX graph mode, x86 backend) on ready tensors
  onnx_fp32_forward    onnxruntime on the exported model.onnx, ready tensors
  onnx_int8_forward    onnxruntime on model.int8.onnx (static QDQ int8), ready tensors
  predict_torch_fp32   cxr_fast predict end to end (decode, resize, forward), engine torch, precision fp32
  predict_torch_bf16   the same with precision bf16 (auto predicts in fp32 on a CPU; earlier results: predict_torch_auto,
                       which was bf16 on a CPU with native bf16)
  predict_onnx_fp32    cxr_fast predict end to end, engine onnx
  predict_onnx_int8    cxr_fast predict end to end, engine onnx, int8
The model is trained for `--train-epochs` on images not in the benchmark set (so its probabilities mean
something; speed does not depend on the weights), exported with `cxr_fast export`, the int8 model
calibrated on 128 further images; agreement (argmax, max |p - p_fp32|) is against torch_fp32_forward on
the benchmark images. Not a test: run it by hand (or `make bench`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "darkcovidnet"
ARCHS = ("resnet18", "tf_efficientnet_lite0")
MODES = {
    "torch_fp32_forward": "pure torch fp32 forward, ready tensors (the reference)",
    "torch_bf16_forward": "torch bf16 autocast + channels-last forward, ready tensors",
    "torch_int8_forward": "torch int8 (FX, x86 backend) forward, ready tensors",
    "onnx_fp32_forward": "onnxruntime fp32 forward, ready tensors",
    "onnx_int8_forward": "onnxruntime int8 forward, ready tensors",
    "predict_torch_fp32": "cxr_fast predict end to end, torch, --precision fp32",
    "predict_torch_bf16": "cxr_fast predict end to end, torch, --precision bf16",
    "predict_onnx_fp32": "cxr_fast predict end to end, --engine onnx",
    "predict_onnx_int8": "cxr_fast predict end to end, --engine onnx --int8",
}


def select_images(data, n, calib=128):
    """(bench, calibration, train) lists of (path, label): `n` images spread evenly over each class folder, then
    `calib` of the rest for int8 calibration, the remainder for training."""
    from cxr_fast.data.images import is_image_file
    classes = sorted(p.name for p in Path(data).iterdir() if p.is_dir())
    files = {c: sorted(str(p) for p in (Path(data) / c).rglob("*") if p.is_file() and is_image_file(p)) for c in classes}
    total = sum(len(v) for v in files.values())
    bench, rest = [], []
    for c, fs in files.items():
        k = min(len(fs), max(1, round(n * len(fs) / total)))
        idx = set(int(i) for i in np.linspace(0, len(fs) - 1, k))
        bench += [(f, c) for i, f in enumerate(fs) if i in idx]
        rest += [(f, c) for i, f in enumerate(fs) if i not in idx]
    step = max(1, len(rest) // calib)
    calibration = rest[::step][:calib]
    train = [r for r in rest if r not in set(calibration)]
    return bench, calibration, train, classes


def train_model_dir(arch, train_rows, classes, out, size, epochs, bs):
    "`arch` trained from scratch for `epochs` on `train_rows` (precision auto), saved as a cxr_fast model dir."
    import pandas as pd
    import torch
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from cxr_fast.data.blocks import get_dls
    from cxr_fast.models.folder import save_model_dir
    from cxr_fast.models.registry import build_model, default_head
    from cxr_fast.training.optim import FastAdam
    from cxr_fast.training.precision import apply_precision, resolve_precision
    torch.manual_seed(0)
    df = pd.DataFrame({"path": [p for p, _ in train_rows], "label": [c for _, c in train_rows],
                       "patient_id": [str(i) for i in range(len(train_rows))], "source": "bench",
                       "split": ["valid" if i % 10 == 0 else "train" for i in range(len(train_rows))]})
    df.attrs.update(task="bench", classes=classes, multilabel=False, source="bench")
    dls = get_dls(df, size=size, bs=bs, aug="cxr", num_workers=0)
    model = build_model(arch, len(classes), default_head())
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=FastAdam)
    apply_precision(learn, resolve_precision("auto", device="cpu", warn=False))
    t0 = time.perf_counter()
    if epochs:
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 2e-3)
    meta = {"arch": arch, "head": default_head(), "n_out": len(classes), "classes": classes, "task": "bench",
            "multilabel": False, "loss": "ce", "img_size": size, "resize_method": "squish", "preprocessing": "none",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "thresholds": {}}
    save_model_dir(model.float().eval(), out, meta)
    return time.perf_counter() - t0


def torch_int8_model(model, batches):
    "torch's FX post-training static int8 quantisation (x86 backend), calibrated on `batches`."
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (batches[0][:1],))
        with torch.inference_mode():
            for b in batches: prepared(b)
        return convert_fx(prepared)


def make_predictor(model_dir, engine, precision="fp32", int8=False):
    "A cxr_fast Predictor for the engine/precision, as `predict --engine E --precision P [--int8]` makes it."
    from cxr_fast.inference.predictor import Predictor
    return Predictor.from_dir(model_dir, device="cpu", engine=engine, precision=precision, int8=int8)


def setup_mode(mode, model_dir, paths, batches, calib_batches, bs):
    "A function running one timed pass of `mode` and returning the probabilities (N, C)."
    import torch

    from cxr_fast.inference.engines import load_onnx
    if mode.startswith("predict_"):
        _, engine, prec = mode.split("_")
        pred = make_predictor(model_dir, engine, "bf16" if prec == "bf16" else "fp32", int8=prec == "int8")
        cols = [f"p_{c}" for c in pred.classes]
        return lambda: pred.predict(paths, batch_size=bs)[cols].to_numpy(dtype=np.float32), pred

    ref = make_predictor(model_dir, "torch", "fp32")
    ref.model = ref.model.to(memory_format=torch.contiguous_format)
    soft = lambda logits: torch.softmax(logits.float(), 1)  # noqa: E731
    if mode == "torch_fp32_forward":
        model = ref.model

        def once():
            with torch.inference_mode(): return torch.cat([soft(model(x)) for x in batches]).numpy()
    elif mode == "torch_bf16_forward":
        model = ref.model.to(memory_format=torch.channels_last)
        cl = [x.contiguous(memory_format=torch.channels_last) for x in batches]

        def once():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return torch.cat([soft(model(x)) for x in cl]).numpy()
    elif mode == "torch_int8_forward":
        model = torch_int8_model(make_predictor(model_dir, "torch", "fp32").model.to(memory_format=torch.contiguous_format),
                                 calib_batches)

        def once():
            with torch.inference_mode(): return torch.cat([soft(model(x)) for x in batches]).numpy()
    elif mode in ("onnx_fp32_forward", "onnx_int8_forward"):
        module, _ = load_onnx(model_dir, int8=mode == "onnx_int8_forward")

        def once(): return torch.cat([soft(module(x)) for x in batches]).numpy()
    else:
        raise ValueError(mode)
    return once, None


def time_modes(args):
    "Every mode of one architecture in this process, interleaved round by round; writes --result JSON."
    import pandas as pd
    import torch

    from cxr_fast.core.machine import machine_info, set_threads
    threads = set_threads()
    rows = pd.read_csv(args.table)
    paths = rows["path"].tolist()
    calib = pd.read_csv(args.calib)["path"].tolist()
    ref = make_predictor(args.model_dir, "torch", "fp32")

    def ready(ps):
        loaded = [ref.load(p) for p in ps]
        return [ref.to_input(torch.stack(loaded[i:i + args.batch_size])).contiguous() for i in range(0, len(loaded), args.batch_size)]
    batches, calib_batches = ready(paths), ready(calib)
    runs, info, errors = {}, {}, {}
    for m in args.modes.split(","):
        try:
            runs[m], pred = setup_mode(m, args.model_dir, paths, batches, calib_batches, args.batch_size)
            if pred is not None:
                info[m] = {"precision": getattr(pred, "precision", None) and pred.precision.as_dict(),
                           "engine": pred.meta.get("engine", "torch")}
            runs[m]()  # warm-up: oneDNN primitives / onnxruntime kernels for every batch shape, page cache
        except Exception as e:  # one mode failing (e.g. torch's FX int8 on an arch) must not lose the others
            errors[m] = f"{type(e).__name__}: {e}"
            runs.pop(m, None)
    rates, probs, loads = {m: [] for m in runs}, {}, []
    for _ in range(args.repeats):
        for m, once in runs.items():
            t0 = time.perf_counter()
            probs[m] = once()
            rates[m].append(len(paths) / (time.perf_counter() - t0))
        loads.append(os.getloadavg()[0])
    base = probs.get("torch_fp32_forward")
    out = {}
    for m, r in rates.items():
        out[m] = {"mode": m, "what": MODES[m], "images": len(paths), "repeats": args.repeats, "img_per_s": max(r),
                  "img_per_s_median": float(np.median(r)), "img_per_s_all": r, **info.get(m, {})}
        if base is not None:
            out[m].update(argmax_agreement_vs_fp32=float((probs[m].argmax(1) == base.argmax(1)).mean()),
                          max_abs_prob_diff_vs_fp32=float(np.abs(probs[m] - base).max()))
    import resource
    Path(args.result).write_text(json.dumps({"modes": out, "errors": errors, "torch_threads": threads,
                                             "load_avg_1min_after_rounds": loads,
                                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                             "machine": machine_info(torch_threads=threads)}, indent=1))


def markdown(results):
    "One table per architecture, ratios to the torch fp32 forward pass."
    m0 = results["machine"]
    lines = [f"{results['images']} real images from {results['data']}, {results['size']} px, batch {results['batch_size']}; "
             f"{m0['cpu_model']} ({m0['usable_cores']} cores; {', '.join(m0['cpu_flags_speed'])}), torch {m0['torch']}, "
             f"onnxruntime {m0.get('onnxruntime', '-')}, {results['torch_threads']} threads; "
             f"load average {results['load_before'][0]:.1f} before / {results['load_after'][0]:.1f} after. "
             f"img/s: best of {results['repeats']} interleaved passes (median).", ""]
    for arch, r in results["archs"].items():
        modes = r["modes"]
        base = modes.get("torch_fp32_forward", {}).get("img_per_s")
        lines += [f"### {arch}", "", "| mode | what | img/s | x torch fp32 forward | argmax agreement | max abs dp |",
                  "|---|---|---:|---:|---:|---:|"]
        for m, v in modes.items():
            ratio = f"{v['img_per_s'] / base:.2f}" if base else "-"
            lines.append(f"| {m} | {v['what']} | {v['img_per_s']:.1f} ({v['img_per_s_median']:.1f}) | {ratio} | "
                         f"{v.get('argmax_agreement_vs_fp32', float('nan')):.3f} | {v.get('max_abs_prob_diff_vs_fp32', float('nan')):.4f} |")
        for m, e in r.get("errors", {}).items(): lines.append(f"\n{m} failed: {e}")
        if r.get("export"): lines.append(f"\nexport: {json.dumps(r['export'])}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    "Parse arguments; prepare models; time every architecture in its own process; save JSON and markdown."
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a folder of class folders of images (DarkCovidNet layout)")
    ap.add_argument("--n", type=int, default=300, help="number of benchmark images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--train-epochs", type=int, default=1, help="training epochs before timing (0: random weights)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per mode; the best is reported (shared machine)")
    ap.add_argument("--out", default=str(HERE / "results_inference.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model-dir", "--table", "--calib", "--result"): ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker: return time_modes(args)
    if not Path(args.data).is_dir():
        print(f"skipped: no images at {args.data} (give --data DIR with class folders)")
        return 0
    import pandas as pd

    from cxr_fast.inference.export import export_onnx
    load_before = os.getloadavg()
    bench, calib, train, classes = select_images(args.data, args.n)
    results = {"data": str(args.data), "images": len(bench), "calibration_images": len(calib), "train_images": len(train),
               "size": args.size, "batch_size": args.batch_size, "repeats": args.repeats, "archs": {},
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "load_before": load_before}
    with tempfile.TemporaryDirectory(prefix="cxr_bench_") as tmp:
        work = Path(tmp)
        pd.DataFrame({"path": [p for p, _ in bench]}).to_csv(work / "bench.csv", index=False)
        pd.DataFrame({"path": [p for p, _ in calib]}).to_csv(work / "calib.csv", index=False)
        for arch in args.archs.split(","):
            mdir = work / arch
            print(f"{arch}: training {args.train_epochs} epoch(s) on {len(train)} images...", flush=True)
            train_s = train_model_dir(arch, train, classes, mdir, args.size, args.train_epochs, args.batch_size)
            t0 = time.perf_counter()
            exported = export_onnx(mdir, int8=True, calibrate=[p for p, _ in calib], calibration_images=len(calib))
            exported["export_s"] = round(time.perf_counter() - t0, 1)
            exported = {k: v for k, v in exported.items() if k not in ("model_dir", "out", "onnx", "int8")}
            print(f"  exported ({exported}); timing {args.repeats} interleaved rounds...", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", "--model-dir", str(mdir), "--table", str(work / "bench.csv"),
                            "--calib", str(work / "calib.csv"), "--result", str(work / f"{arch}.json"),
                            "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--modes", args.modes],
                           check=True)
            r = json.loads((work / f"{arch}.json").read_text())
            results["machine"], results["torch_threads"] = r.pop("machine"), r["torch_threads"]
            results["archs"][arch] = {**r, "train_s": round(train_s, 1), "export": exported}
            for m, v in r["modes"].items():
                print(f"  {m:<20} {v['img_per_s']:6.1f} img/s  agreement {v.get('argmax_agreement_vs_fp32', float('nan')):.3f}"
                      f"  max|dp| {v.get('max_abs_prob_diff_vs_fp32', float('nan')):.4f}", flush=True)
    results["load_after"] = os.getloadavg()
    results["machine"]["shared"] = True  # other jobs ran on the same 2 cores: compare within this run only
    results["markdown"] = markdown(results)
    print("\n" + results["markdown"])
    from cxr_fast.core.jsonio import write_atomic
    write_atomic(args.out, lambda p: p.write_text(json.dumps(results, indent=1)))
    write_atomic(Path(args.out).with_suffix(".md"), lambda p: p.write_text("# Inference benchmark\n\n" + results["markdown"] + "\n"))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
