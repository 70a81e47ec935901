"""What frozen-feature head training saves: a head-only stage end to end vs on features computed once.

    python bench/bench_frozen_features.py --images 200 --size 128 --epochs 1,5

On a class-balanced subset of DarkCovidNet (patients split 80/20), the same pretrained EfficientNet-Lite0 learner
(same seed) trains its head for E epochs twice: end to end (fastai's freeze(): augmentation, the body's BatchNorm
statistics following the batches) and with frozen features (training.features: one body pass, no augmentation,
BatchNorm as it is). Per E: the stage's wall and process CPU seconds (feature computation included) and the valid
accuracy. The result and the machine go into docs/reproduction.json ("frozen_features") and its .md.
"""
import argparse
import sys
import time
from pathlib import Path

from fastai.torch_core import set_seed

HERE = Path(__file__).resolve().parent
import reproduce  # noqa: E402

from cxr_fast import cxr_learner, get_dls, load_table  # noqa: E402
from cxr_fast.core.jsonio import read_json  # noqa: E402
from cxr_fast.core.machine import machine_info, set_threads  # noqa: E402
from cxr_fast.training.features import fit_head_on_features  # noqa: E402
from cxr_fast.training.plans import fit_stage, parse_plan  # noqa: E402

ARCH = reproduce.SUBSTITUTE


def subset(root, images, seed):
    "About `images` DarkCovidNet images, as many per class, 80% train / 20% valid (split by patient)."
    table = load_table("folders", str(root), "3class", valid_pct=0.2, test_pct=0.0, seed=seed)
    keep = {"train": round(images * 0.8 / 3), "valid": round(images * 0.2 / 3)}  # per class
    shuffled = table.sample(frac=1, random_state=seed)
    rank = shuffled.groupby(["split", "label"]).cumcount()
    out = shuffled[rank < shuffled["split"].map(keep)].sort_index()
    out.attrs = dict(table.attrs)
    return out


def one_stage(table, size, bs, epochs, lr, frozen, seed):
    "Wall and CPU seconds of one head-only stage, and the valid accuracy after it."
    set_seed(seed, reproducible=True)
    learn = cxr_learner(get_dls(table, size=size, bs=bs, aug="cxr", num_workers=0, seed=seed), ARCH, pretrained=True)
    stage = parse_plan(f"head:{epochs}@{lr}", lr)[0]
    wall, cpu = time.perf_counter(), time.process_time()
    (fit_head_on_features if frozen else fit_stage)(learn, stage)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "valid_accuracy": round(float(learn.validate()[1]), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "darkcovidnet"))
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--epochs", default="1,5")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default=str(HERE.parent / "docs" / "reproduction.json"))
    a = p.parse_args(argv)
    threads = set_threads()
    table = subset(a.data, a.images, a.seed)
    rows = []
    for e in [int(x) for x in a.epochs.split(",")]:
        end, feat = (one_stage(table, a.size, a.bs, e, a.lr, frozen, a.seed) for frozen in (False, True))
        rows.append({"epochs": e, "end_to_end": end, "frozen_features": feat,
                     "speedup_wall": round(end["wall_s"] / feat["wall_s"], 2)})
        print(rows[-1])
    counts = table["split"].value_counts().to_dict()
    result = {"command": "python bench/bench_frozen_features.py " + " ".join(argv or sys.argv[1:]),
              "arch": ARCH, "size": a.size, "bs": a.bs, "lr": a.lr, "images": counts, "rows": rows,
              "machine": machine_info(torch_threads=threads, shared=True)}
    doc = read_json(a.json) or {"recipes": {}}
    doc["frozen_features"] = result
    reproduce.write_docs(doc, Path(a.json), Path(a.json).with_suffix(".md"))
    return result


if __name__ == "__main__":
    main()
