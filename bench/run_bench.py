"""`make bench`: training and inference throughput side by side, measured in one run on this machine.

Writes bench/results.json and bench/results.md. Each training case runs in its own process (its peak RSS
is its own), `--rounds` times, the cases interleaved round by round; the best round of each case is
reported (a shared machine only ever slows a case down) with every round's figure and the load average
after it; bare_fp32 also runs last in each round, so the drift shows. Cases named
*_avx2 run with ONEDNN_MAX_CPU_ISA=AVX2: oneDNN limited to AVX2, a CPU without native bf16 (issue #13's EPYC).
Every record carries the machine (cxr_fast.core.machine.machine_info): CPU model and flags, torch, threads,
workers, the precision used.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "darkcovidnet"
TRAIN_CASES = ["bare_fp32", "bare_bf16", "bare_fp32_cl", "fastai_plain_data", "fastai_plain", "cxr_fast_data",
               "cxr_fast_fp32", "cxr_fast_fp32_fastai_adam", "cxr_fast_auto", "bare_fp32_end"]
AVX2_CASES = ["bare_fp32_avx2", "bare_bf16_avx2", "bare_fp32_cl_avx2"]  # once (images do not matter to a bare step)
# channels-last for training on this CPU, for the depthwise-convolution body too (precision.CPU_CHANNELS_LAST)
LITE0_CASES = ["bare_fp32_lite0", "bare_fp32_cl_lite0", "bare_bf16_lite0", "bare_bf16_cl_lite0"]


def make_full_size(src, dest, size=1024):
    "8-bit grayscale PNGs of `size` px (upscaled from the shared set) in the same class folders."
    if dest.is_dir() and sum(1 for _ in dest.rglob("*.png")) >= sum(1 for f in src.rglob("*") if f.is_file()):
        return dest
    for f in sorted(src.rglob("*")):
        if not f.is_file(): continue
        out = dest / f.parent.name / (f.stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists(): Image.open(f).convert("L").resize((size, size), Image.LANCZOS).save(out)
    return dest


def run_case(case, data, args, tmp, rnd=0):
    out = tmp / f"{case}-{Path(data).name}-r{rnd}.json"
    if args.reuse and out.is_file():  # a case measured earlier in this same benchmark run
        result = json.loads(out.read_text())
        print(f"  {case:<26} {result['img_per_s']:6.1f} img/s  (reused {out.name})", flush=True)  # noqa
        return result
    env = dict(os.environ)
    batches, bs = args.batches, args.bs
    if case.endswith("_avx2"):
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        batches, bs = 2, 16  # emulated bf16 runs about 1 img/s: issue #13's batch of 16, 2 timed steps
    cmd = [sys.executable, str(HERE / "bench_train.py"), "--case", case.removesuffix("_end"), "--data", str(data),
           "--size", str(args.size), "--bs", str(bs), "--batches", str(batches), "--json", str(out),
           "--cache-dir", str(tmp / f"cache-{Path(data).name}")]  # filled by the first cxr_fast case, then warm
    t = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    result = json.loads(out.read_text())
    result.update(case=case, wall_s=round(time.time() - t, 1), load_avg_after=os.getloadavg()[0])
    print(f"  {case:<26} {result['img_per_s']:6.1f} img/s  peak {result['peak_rss_mb']:6.0f} MB  "
          f"load {result['load_avg_after']:.1f}", flush=True)
    return result


def best_of(runs):
    "The fastest run of a case, with every run's rate and load average kept."
    best = dict(max(runs, key=lambda r: r["img_per_s"]))
    best["rounds"] = [{"img_per_s": r["img_per_s"], "load_avg_after": r.get("load_avg_after")} for r in runs]
    return best


def limit_of(rows):
    """What limits each pipeline: the data path alone vs the training step alone, and how far from the
    step it got (the rest is the loop, augmentation on the main thread and the optimizer sharing the cores)."""
    by = {r["case"]: r["img_per_s"] for r in rows}
    out = {}
    for name, data_case, step_case in (("fastai_plain", "fastai_plain_data", "bare_fp32"),
                                       ("cxr_fast_fp32", "cxr_fast_data", "bare_fp32"),
                                       ("cxr_fast_fp32_fastai_adam", "cxr_fast_data", "bare_fp32"),
                                       ("cxr_fast_auto", "cxr_fast_data", "bare_bf16")):
        if not {name, data_case, step_case} <= set(by): continue
        data, step, got = by[data_case], by[step_case], by[name]
        limit = "data pipeline (decode+resize+augment)" if data < step else "forward/backward"
        out[name] = (f"{limit}: data path alone {data:.0f} img/s, step alone ({step_case}) {step:.1f}; "
                     f"reached {got / step:.2f}x the step")
    return out


def ratios(rows):
    by = {r["case"]: r["img_per_s"] for r in rows}
    step = max(by.get("bare_fp32", 0), by.get("bare_fp32_end", 0)) or None  # the better of the two bare runs
    pairs = {"cxr_fast_fp32 / fastai_plain": ("cxr_fast_fp32", "fastai_plain"),
             "cxr_fast_fp32_fastai_adam / fastai_plain": ("cxr_fast_fp32_fastai_adam", "fastai_plain"),
             "cxr_fast_auto / fastai_plain": ("cxr_fast_auto", "fastai_plain"),
             "bare_fp32 / fastai_plain": ("bare_fp32", "fastai_plain"),
             "bare_bf16 / bare_fp32": ("bare_bf16", "bare_fp32"),
             "bare_fp32_cl / bare_fp32": ("bare_fp32_cl", "bare_fp32"),
             "bare_fp32_cl_lite0 / bare_fp32_lite0": ("bare_fp32_cl_lite0", "bare_fp32_lite0"),
             "bare_bf16_cl_lite0 / bare_bf16_lite0": ("bare_bf16_cl_lite0", "bare_bf16_lite0"),
             "bare_bf16_lite0 / bare_fp32_lite0": ("bare_bf16_lite0", "bare_fp32_lite0")}
    out = {k: by[a] / by[b] for k, (a, b) in pairs.items() if a in by and b in by}
    if step:
        for case in ("cxr_fast_fp32", "cxr_fast_fp32_fastai_adam", "fastai_plain"):
            if case in by: out[f"{case} / bare_fp32 (best of start and end)"] = by[case] / step
    return out


def markdown(results):
    m = results["machine"]
    lines = ["# cxr_fast benchmarks", "",
             f"Machine: {m['cpu_model']}, {m['usable_cores']} cores ({', '.join(m['cpu_flags_speed'])}), torch {m['torch']}, "
             f"{m['torch_threads']} torch threads; load average {results['load_before'][0]:.1f} before, "
             f"{results['load_after'][0]:.1f} after"
             f"{' (above the core count: other jobs shared the machine)' if max(results['load_before'][0], results['load_after'][0]) > m['usable_cores'] + 0.5 else ''}. "
             f"Command: `{results['command']}`.", ""]
    for key, title in (("train_small", "Training, shared DarkCovidNet images (<=384 px) at 224 px"),
                       ("train_full", "Training, the same images as 1024 px PNGs at 224 px"),
                       ("train_avx2", "Bare training step with oneDNN capped to AVX2 (no native bf16), batch 16"),
                       ("train_lite0", "Bare training step, EfficientNet-Lite0 at 224 px: channels-last and bf16")):
        if key not in results: continue
        rows, limits = results[key]["cases"], results[key]["limits"]
        lines += [f"## {title}", "", "| case | img/s best (each round) | precision | workers | peak RSS MB | load after | limited by |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            prec = (r.get("precision") or {}).get("name", "-")
            every = " / ".join(f"{x['img_per_s']:.1f}" for x in r.get("rounds", []))
            loads = " / ".join(f"{x['load_avg_after']:.1f}" for x in r.get("rounds", []) if x.get("load_avg_after") is not None)
            lines.append(f"| {r['case']} | {r['img_per_s']:.1f} ({every}) | {prec} | {r.get('num_workers', '-')} | "
                         f"{r['peak_rss_mb']:.0f} | {loads} | {limits.get(r['case'], '')} |")
        if results[key]["ratios"]:
            lines += ["", "Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in results[key]["ratios"].items())]
        lines.append("")
    if "inference" in results:
        lines += ["## Inference", "", results["inference"].get("markdown", "```\n" + json.dumps(results["inference"], indent=1) + "\n```"), ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the training cases; the best is reported")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: small,full,avx2,lite0,inference")
    p.add_argument("--inference-repeats", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="reuse case results already in bench/tmp (finish an interrupted run)")
    a = p.parse_args()
    data = Path(a.data)
    if not data.is_dir(): sys.exit(f"benchmark data not found at {data}; give --data DIR (class folders)")
    skip = set(a.skip.split(","))
    tmp = HERE / "tmp"
    tmp.mkdir(exist_ok=True)
    from cxr_fast.core.machine import machine_info, set_threads
    results = {"machine": machine_info(torch_threads=set_threads(), shared=True), "settings": vars(a),
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "load_before": os.getloadavg()}
    for key, d, cases in (("train_small", data, TRAIN_CASES), ("train_full", None, TRAIN_CASES),
                          ("train_avx2", data, AVX2_CASES), ("train_lite0", data, LITE0_CASES)):
        if key.split("_")[1] in skip: continue
        if d is None: d = make_full_size(data, tmp / "full1024")
        print(f"{key}: {d}", flush=True)
        rounds = [[run_case(c, d, a, tmp, r) for c in cases] for r in range(1 if key == "train_avx2" else a.rounds)]
        rows = [best_of([rnd[i] for rnd in rounds]) for i in range(len(cases))]
        results[key] = {"data": str(d), "cases": rows, "limits": limit_of(rows), "ratios": ratios(rows)}
    if "inference" not in skip and (HERE / "bench_inference.py").is_file():
        out = tmp / "inference.json"
        subprocess.run([sys.executable, str(HERE / "bench_inference.py"), "--data", str(data), "--out", str(out),
                        "--repeats", str(a.inference_repeats)], check=True)
        results["inference"] = json.loads(out.read_text())
    results["load_after"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(results, indent=1))
    Path(a.out).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
