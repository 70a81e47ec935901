"""The built-in default: train on synthetic phantoms, no download needed.

SYNTHETIC DATA: the phantoms (sources/phantom.py) only look like chest X-rays. The demo shows the
whole pipeline working (table -> DataLoaders -> Learner -> fit -> run folder -> predict) and that a
model learns the phantoms' class patterns; its numbers say nothing about real X-rays.
"""
from pathlib import Path

from .args import as_bool, as_int
from .table import build_table

BANNER = ("SYNTHETIC DATA: these are generated phantoms, not chest X-rays. The numbers below show that the "
          "pipeline learns; they say nothing about diagnosing real patients.")


def demo(out="runs/demo", patients_per_class=50, size=96, epochs=8, lr=3e-3, arch="resnet18", bf16=None, seed=0):
    "Generate phantoms in OUT/phantoms, train `arch` from scratch on them, write OUT; returns the metrics."
    from .precision import cpu_supports_bf16  # lazy, both: `demo --help` answers without torch and fastai
    from .training import train
    out = Path(out)
    table = build_table("phantom", out / "phantoms", "3class", patients_per_class=patients_per_class, image_size=128,
                        valid_pct=0.2, test_pct=0.2, seed=seed)
    bf16 = cpu_supports_bf16() if bf16 is None else bf16
    return train(table=table, arch=arch, pretrained=False, out=out, epochs=epochs, lr=lr, size=size, bs=16,
                 seed=seed, bf16=bf16, overwrite=True)


def demo_command(out="runs/demo", patients_per_class=50, size=96, epochs=8, arch="resnet18", bf16=None, seed=0):
    """Generate synthetic phantom X-rays, train a small model on them on CPU, write a run folder.

    Args:
      out: the run folder (phantom images go to OUT/phantoms)
      patients_per_class: phantom patients per class (1-3 images each)
      size: training image size
      epochs: fit_one_cycle epochs
      arch: the architecture (trained from scratch: no download)
      bf16: bfloat16 autocast on CPU (default: when the CPU supports it)
      seed: data and training seed
    """
    print(BANNER + "\n")
    result = demo(out, as_int(patients_per_class, "patients-per-class", 6), as_int(size, "size", 32),
                  as_int(epochs, "epochs", 1), arch=str(arch), bf16=None if bf16 is None else as_bool(bf16, "bf16"),
                  seed=as_int(seed, "seed"))
    test = result.get("test", {})
    print(f"\n{BANNER}")
    print(f"held-out phantom test images: accuracy {test.get('accuracy', float('nan')):.3f} "
          f"(chance 0.333), macro F1 {test.get('macro_f1', float('nan')):.3f}")
    print(f"run folder: {out} (report.md, metrics.json, plots, model/)")
    print(f"predict:    python -m cxr_fast predict {Path(out) / 'model'} {Path(out) / 'phantoms'} --out preds.csv")
    return 0
