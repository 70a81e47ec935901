"""`demo`: synthetic phantoms, a small fine-tuned model, a run folder."""
from pathlib import Path

from ..apps.demo import BANNER, DEMO_ARCH, demo
from ..core.args import as_bool, as_int


def demo_command(out="runs/demo", patients_per_class=50, size=96, head_epochs=2, epochs=4, arch=DEMO_ARCH,
                 pretrained=True, shortcut_mitigation=True, precision="auto", seed=0):
    """Generate synthetic phantom X-rays and fine-tune an ImageNet-pretrained EfficientNet-Lite0 on them (CPU, offline).

    Args:
      out: the run folder (phantom images go to OUT/phantoms)
      patients_per_class: phantom patients per class (1-3 images each)
      size: training image size
      head_epochs: epochs of the first stage (body frozen, the new head trains)
      epochs: epochs of the second stage (everything trains, discriminative learning rates)
      arch: the architecture (default tf_efficientnet_lite0, whose ImageNet weights come with pip)
      pretrained: start from pretrained weights (false: one fit_one_cycle from scratch)
      shortcut_mitigation: crop every image to its central field, then to a square, as darkcovidnet-pretrained does
        (false: the whole image, squished)
      precision: auto (chosen by the machine), fp32, bf16 or fp16
      seed: data and training seed
    """
    print(BANNER + "\n")
    result = demo(out, as_int(patients_per_class, "patients-per-class", 6), as_int(size, "size", 32),
                  as_int(head_epochs, "head-epochs", 0), as_int(epochs, "epochs", 1), arch=str(arch),
                  pretrained=as_bool(pretrained, "pretrained"),
                  shortcut_mitigation=as_bool(shortcut_mitigation, "shortcut-mitigation"), precision=str(precision),
                  seed=as_int(seed, "seed"))
    test = result.get("test", {})
    print(f"\n{BANNER}")
    print(f"held-out phantom test images: accuracy {test.get('accuracy', float('nan')):.3f} "
          f"(chance 0.333), macro F1 {test.get('macro_f1', float('nan')):.3f}")
    print(f"run folder: {out} (report.md: starting weights, the frozen and unfrozen stages, metrics, plots; model/)")
    print(f"predict:    python -m cxr_fast predict {Path(out) / 'model'} {Path(out) / 'phantoms'} --out preds.csv")
    return 0
