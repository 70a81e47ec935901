"""`make bench`: training and inference throughput side by side, measured in one run on this machine.

Writes bench/results.json and bench/results.md. Each case runs in its own process.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "darkcovidnet"
TRAIN_CASES = ["bare_fp32", "bare_bf16", "fastai_plain_data", "fastai_plain", "cxr_fast_data", "cxr_fast_fp32", "cxr_fast_bf16"]


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


def run_case(case, data, args, tmp):
    out = tmp / f"{case}-{Path(data).name}.json"
    if args.reuse and out.is_file():  # a case measured earlier in this same benchmark run
        result = json.loads(out.read_text())
        print(f"  {case:<18} {result['img_per_s']:6.1f} img/s  (reused {out.name})", flush=True)
        return result
    cmd = [sys.executable, str(HERE / "bench_train.py"), "--case", case, "--data", str(data), "--size", str(args.size),
           "--bs", str(args.bs), "--batches", str(args.batches), "--json", str(out)]
    t = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.time() - t, 1)
    print(f"  {case:<18} {result['img_per_s']:6.1f} img/s  peak {result['peak_rss_mb']:6.0f} MB", flush=True)
    return result


def limit_of(rows):
    "What limits each pipeline: the data path alone vs the training step alone."
    by = {r["case"]: r["img_per_s"] for r in rows}
    out = {}
    for name, data_case, step_case in (("fastai_plain", "fastai_plain_data", "bare_fp32"),
                                       ("cxr_fast_fp32", "cxr_fast_data", "bare_fp32"),
                                       ("cxr_fast_bf16", "cxr_fast_data", "bare_bf16")):
        if data_case in by and step_case in by:
            out[name] = "data pipeline (decode+resize+augment)" if by[data_case] < by[step_case] else "forward/backward"
    return out


def markdown(results):
    lines = ["# cxr_fast benchmarks", "", f"Machine: {results['machine']}. Command: `make bench`.", ""]
    for key, title in (("train_small", "Training, shared DarkCovidNet images (<=384 px) at 224 px"),
                       ("train_full", "Training, the same images as 1024 px PNGs at 224 px")):
        if key not in results: continue
        rows, limits = results[key]["cases"], results[key]["limits"]
        lines += [f"## {title}", "", "| case | img/s | peak RSS MB | workers | limited by |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['case']} | {r['img_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {r.get('num_workers', '-')} | "
                         f"{limits.get(r['case'], '')} |")
        lines += ["", "Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in results[key]["ratios"].items()), ""]
    if "inference" in results:
        lines += ["## Inference", "", results["inference"].get("markdown", "```\n" + json.dumps(results["inference"], indent=1) + "\n```"), ""]
    return "\n".join(lines)


def ratios(rows):
    by = {r["case"]: r["img_per_s"] for r in rows}
    pairs = {"cxr_fast_fp32 / fastai_plain": ("cxr_fast_fp32", "fastai_plain"),
             "cxr_fast_fp32 / bare_fp32": ("cxr_fast_fp32", "bare_fp32"),
             "cxr_fast_bf16 / fastai_plain": ("cxr_fast_bf16", "fastai_plain"),
             "cxr_fast_bf16 / bare_fp32": ("cxr_fast_bf16", "bare_fp32")}
    return {k: by[a] / by[b] for k, (a, b) in pairs.items() if a in by and b in by}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: small,full,inference")
    p.add_argument("--inference-repeats", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="reuse case results already in bench/tmp (finish an interrupted run)")
    a = p.parse_args()
    data = Path(a.data)
    if not data.is_dir(): sys.exit(f"benchmark data not found at {data}; give --data DIR (class folders)")
    skip = set(a.skip.split(","))
    tmp = HERE / "tmp"
    tmp.mkdir(exist_ok=True)
    import platform, os
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads default",
               "settings": vars(a)}
    for key, d in (("train_small", data), ("train_full", None)):
        if key.split("_")[1] in skip: continue
        if d is None: d = make_full_size(data, tmp / "full1024")
        print(f"{key}: {d}", flush=True)
        rows = [run_case(c, d, a, tmp) for c in TRAIN_CASES]
        results[key] = {"data": str(d), "cases": rows, "limits": limit_of(rows), "ratios": ratios(rows)}
    if "inference" not in skip and (HERE / "bench_inference.py").is_file():
        out = tmp / "inference.json"
        subprocess.run([sys.executable, str(HERE / "bench_inference.py"), "--out", str(out), "--repeats", str(a.inference_repeats)],
                       check=True)
        results["inference"] = json.loads(out.read_text())
    Path(a.out).write_text(json.dumps(results, indent=1))
    Path(a.out).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
