"""Inference speed on CPU: fastai's learn.predict loop vs the pure forward pass vs cxr_fast predict.

    python bench/bench_inference.py [--data ../shared/data/darkcovidnet] [--n 300] [--out bench/results_inference.json]

Side by side, for resnet18 at 224 px over N real images (each mode in its own process, so its peak RSS
is its own):
  (a) fastai `learn.predict(path)` one image at a time (what a notebook usually does);
  (b) the model's batched forward pass on ready, normalised tensors (the compute limit, fp32);
  (c) `cxr_fast` Predictor.predict(paths) end to end (decode + resize + forward), fp32;
  (d) the same with bf16 autocast + channels_last;
  (e) the batched forward pass in bf16 + channels_last (the compute limit for d).
The model is resnet18 fine-tuned for `--train-epochs` on the same images (so its probabilities are
not all near 1/3 and the bf16 comparison means something); speed does not depend on the weights.
Also reported: max |p(fp32) - p(bf16)| and argmax agreement on the real images and on phantoms,
and max |p(a) - p(c)| (cxr_fast preprocessing vs fastai's own pipeline). Not a test: run it by hand.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "darkcovidnet"
MODES = {
    "a": "fastai learn.predict, one image at a time",
    "b": "pure batched forward on ready tensors (fp32)",
    "c": "cxr_fast predict end to end (fp32)",
    "d": "cxr_fast predict bf16 + channels_last",
    "e": "pure batched forward bf16 + channels_last",
}


def select_images(data, n):
    "About `n` image paths spread evenly over the sorted files of each class folder, with their labels."
    from cxr_fast.images import is_image_file
    classes = sorted(p.name for p in Path(data).iterdir() if p.is_dir())
    per_class = {c: sorted(str(p) for p in (Path(data) / c).rglob("*") if p.is_file() and is_image_file(p)) for c in classes}
    total = sum(len(v) for v in per_class.values())
    paths, labels = [], []
    for c, files in per_class.items():
        k = max(1, round(n * len(files) / total))
        picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(k, len(files)))]
        paths += picked
        labels += [c] * len(picked)
    return paths, labels, classes


def make_table(paths, labels, classes):
    "A canonical table over the images: every fifth image in valid (a speed benchmark, not an evaluation)."
    import pandas as pd
    df = pd.DataFrame({"path": paths, "patient_id": [str(i) for i in range(len(paths))], "label": labels,
                       "split": ["valid" if i % 5 == 0 else "train" for i in range(len(paths))], "source": "bench"})
    df.attrs.update(task="bench", classes=classes, multilabel=False, source="bench")
    return df


def build_model_dir(table, out, size, epochs, bs):
    "resnet18 (random init) fine-tuned for `epochs` on the table, saved as a cxr_fast model dir."
    import torch
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from cxr_fast.blocks import get_dls
    from cxr_fast.modelio import save_model_dir
    from cxr_fast.models import build_model, default_head, splitter_for
    torch.manual_seed(0)
    classes = table.attrs["classes"]
    dls = get_dls(table, size=size, bs=bs, aug="cxr", num_workers=0)
    model = build_model("resnet18", len(classes), default_head())
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=splitter_for("resnet18"))
    t0 = time.perf_counter()
    if epochs:
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 2e-3)
    meta = {"arch": "resnet18", "head": default_head(), "n_out": len(classes), "classes": classes, "task": "bench",
            "multilabel": False, "loss": "ce", "img_size": size, "resize_method": "squish",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "thresholds": {}}
    save_model_dir(model.eval(), out, meta)
    return time.perf_counter() - t0


def rss_mb():
    "(current, peak) resident set size of this process in MB, from /proc (VmHWM restarts at exec, unlike ru_maxrss)."
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def forward_batches(pred, paths, bs):
    "The normalised input batches for `paths`, made before timing."
    import torch
    loaded = [pred.load(p) for p in paths]
    return [pred.to_input(torch.stack(loaded[i:i + bs])) for i in range(0, len(loaded), bs)]


def setup_mode(mode, model_dir, table, bs):
    "A function running one timed pass of `mode` over the table's images and returning probabilities (N, C)."
    import torch

    from cxr_fast.inference import Predictor
    paths = table["path"].tolist()
    if mode == "a":
        from fastai.learner import Learner
        from fastai.losses import CrossEntropyLossFlat

        from cxr_fast.blocks import get_dls
        pred = Predictor.from_dir(model_dir, device="cpu")
        table.attrs.update(task="bench", classes=pred.classes, multilabel=False, source="bench")
        dls = get_dls(table, size=pred.img_size, bs=bs, aug="none", num_workers=0)
        learn = Learner(dls, pred.model, loss_func=CrossEntropyLossFlat())

        def once():
            with learn.no_bar(), learn.no_logging():
                return np.stack([learn.predict(p)[2].numpy() for p in paths])
        return once
    fast = mode in ("d", "e")
    pred = Predictor.from_dir(model_dir, device="cpu", bf16=fast, channels_last=fast)
    if mode in ("b", "e"):
        batches = forward_batches(pred, paths, bs)
        return lambda: torch.cat([pred.forward_proba(x) for x in batches]).numpy()
    cols = [f"p_{c}" for c in pred.classes]
    return lambda: pred.predict(paths, batch_size=bs)[cols].to_numpy(dtype=np.float32)


def time_modes(modes, model_dir, table_csv, bs, result_path, repeats):
    """Every mode in this one process, interleaved round by round (so each sees the same load on a shared
    machine); the best and median pass are reported. Probabilities of the last pass go to <mode>.npy."""
    import pandas as pd
    import torch
    table = pd.read_csv(table_csv, dtype=str, keep_default_na=False)
    runs = {m: setup_mode(m, model_dir, table, bs) for m in modes}
    for m, once in runs.items():  # warm-up: oneDNN primitives for every batch shape, page cache
        if m == "a": setup_mode(m, model_dir, table.head(3), bs)()  # one image at a time: a few suffice
        else: once()
    rates = {m: [] for m in modes}
    loads = []
    for _ in range(repeats):
        for m, once in runs.items():
            t0 = time.perf_counter()
            probs = once()
            rates[m].append(len(table) / (time.perf_counter() - t0))
            np.save(Path(result_path).parent / f"{m}.npy", probs)
        loads.append(os.getloadavg()[0])
    Path(result_path).write_text(json.dumps({m: {
        "mode": m, "what": MODES[m], "images": len(table), "repeats": repeats, "img_per_s": max(r),
        "img_per_s_median": float(np.median(r)), "img_per_s_all": r, "torch_threads": torch.get_num_threads(),
        "load_avg_1min_after_rounds": loads} for m, r in rates.items()}))


def memory_of_mode(mode, model_dir, table_csv, bs, result_path):
    "Peak RSS of one pass of `mode` in a fresh process, and the RSS before it (imports + model)."
    import pandas as pd
    table = pd.read_csv(table_csv, dtype=str, keep_default_na=False)
    once = setup_mode(mode, model_dir, table, bs)
    before, _ = rss_mb()
    once()
    _, peak = rss_mb()
    Path(result_path).write_text(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak}))


def agreement(p, q):
    "Max abs probability difference and argmax agreement of two (N, C) arrays."
    return {"max_abs_prob_diff": float(np.abs(p - q).max()), "argmax_agreement": float((p.argmax(1) == q.argmax(1)).mean())}


def phantom_agreement(model_dir, work, bs):
    "fp32 vs bf16+channels_last on synthetic phantoms (the built-in demo data)."
    import cxr_fast
    from cxr_fast.inference import Predictor
    from cxr_fast.sources.phantom import make_phantoms
    csv = make_phantoms(work / "phantoms", patients_per_class=20, size=256, seed=1)
    paths = [str(p) for p in sorted((work / "phantoms").glob("*.png"))]
    p32 = cxr_fast.load_model(model_dir, device="cpu").predict(paths, batch_size=bs)
    p16 = Predictor.from_dir(model_dir, device="cpu", bf16=True, channels_last=True).predict(paths, batch_size=bs)
    cols = [c for c in p32.columns if c.startswith("p_")]
    return {"images": len(paths), **agreement(p32[cols].to_numpy(), p16[cols].to_numpy())}, csv


def markdown(results, meta):
    "The results as a markdown table plus the agreement lines."
    b = next(r for r in results if r["mode"] == "b")["img_per_s"]
    a = next(r for r in results if r["mode"] == "a")["img_per_s"]
    lines = [f"resnet18, {meta['size']} px, batch {meta['batch_size']}, {meta['images']} images from {meta['data']}; "
             f"{meta['cpu_count']} CPUs, torch threads {results[0]['torch_threads']}, "
             f"load average {meta['load_before'][0]:.2f} before / {meta['load_after'][0]:.2f} after", "",
             f"img/s: best of {results[0]['repeats']} interleaved passes (median in brackets); RSS: one pass of the "
             f"mode in a fresh process (torch + fastai imports and the model alone are 'RSS before')", "",
             "| mode | what | img/s | x forward (b) | x learn.predict (a) | peak RSS MB | RSS before MB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['what']} | {r['img_per_s']:.1f} ({r['img_per_s_median']:.1f}) | "
                     f"{r['img_per_s'] / b:.2f} | {r['img_per_s'] / a:.2f} | {r.get('peak_rss_mb', float('nan')):.0f} | "
                     f"{r.get('rss_before_mb', float('nan')):.0f} |")
    for name, agr in meta["agreement"].items():
        lines.append(f"\n{name}: max |dp| {agr['max_abs_prob_diff']:.4f}, argmax agreement {agr['argmax_agreement']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    "Parse arguments; run every mode in a subprocess; print and save the comparison."
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a folder of class folders of images (DarkCovidNet layout)")
    ap.add_argument("--n", type=int, default=300, help="number of images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-epochs", type=int, default=1, help="fine-tuning epochs before timing (0: random weights)")
    ap.add_argument("--modes", default="abcde")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per mode; the best is reported (shared machine)")
    ap.add_argument("--out", default=str(HERE / "results_inference.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "time":
        return time_modes(args.modes, args.model_dir, args.table, args.batch_size, args.result, args.repeats)
    if args.worker:
        return memory_of_mode(args.worker, args.model_dir, args.table, args.batch_size, args.result)
    if not Path(args.data).is_dir():
        print(f"skipped: no images at {args.data} (give --data DIR with class folders)")
        return 0
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cxr_bench_") as tmp:
        work = Path(tmp)
        paths, labels, classes = select_images(args.data, args.n)
        table = make_table(paths, labels, classes)
        table.to_csv(work / "table.csv", index=False)
        print(f"{len(paths)} images from {args.data}; fine-tuning resnet18 for {args.train_epochs} epoch(s)...", flush=True)
        train_s = build_model_dir(table, work / "model", args.size, args.train_epochs, args.batch_size)
        common = ["--model-dir", str(work / "model"), "--table", str(work / "table.csv"),
                  "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--modes", args.modes]
        print(f"timing modes {args.modes}, {args.repeats} interleaved rounds...", flush=True)
        subprocess.run([sys.executable, __file__, "--worker", "time", "--result", str(work / "time.json"), *common], check=True)
        timing = json.loads((work / "time.json").read_text())
        results, probs = [], {}
        for mode in args.modes:
            res = work / f"mem_{mode}.json"
            subprocess.run([sys.executable, __file__, "--worker", mode, "--result", str(res), *common], check=True)
            results.append({**timing[mode], **json.loads(res.read_text())})
            probs[mode] = np.load(work / f"{mode}.npy")
            print(f"  ({mode}) {MODES[mode]}: {results[-1]['img_per_s']:.1f} img/s, peak RSS "
                  f"{results[-1]['peak_rss_mb']:.0f} MB", flush=True)
        agreements = {}
        if "c" in probs and "d" in probs: agreements["real images, fp32 (c) vs bf16+channels_last (d)"] = agreement(probs["c"], probs["d"])
        if "a" in probs and "c" in probs: agreements["real images, learn.predict (a) vs cxr_fast (c)"] = agreement(probs["a"], probs["c"])
        agreements["phantoms, fp32 vs bf16+channels_last"], _ = phantom_agreement(work / "model", work, args.batch_size)
    meta = {"data": str(args.data), "images": len(paths), "size": args.size, "batch_size": args.batch_size,
            "train_epochs": args.train_epochs, "train_seconds": train_s, "cpu_count": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg(), "agreement": agreements,
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    table_md = markdown(results, meta)
    print("\n" + table_md)
    from cxr_fast.table import write_atomic
    write_atomic(args.out, lambda p: p.write_text(json.dumps({**meta, "results": results, "markdown": table_md}, indent=1)))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
