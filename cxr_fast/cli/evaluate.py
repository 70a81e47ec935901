"""`evaluate` and `compare`: a trained model on a labelled dataset; several runs side by side."""
from ..evaluation.metrics import HEADLINE, N_BOOT
from ..evaluation.report import md_table, with_ci
from ..evaluation.runs import compare, compare_markdown, evaluate
from ..training.options import OPTIONS  # --seed, --bs and --precision as train takes them
from ..core.args import as_choice, as_int
from ..data.images import MAX_PIXELS, set_max_pixels


def evaluate_command(model_dir, source, root, task=None, out=None, classes=None, split="all", n_boot=N_BOOT, seed=0,
                     bs=32, gradcam=8, precision="auto", max_pixels=MAX_PIXELS, **source_options):
    """Evaluate a trained model on another labelled dataset: metrics with 95% CIs, figures, report.md.

    Args:
      model_dir: a model folder, or a run folder (its model/ is used)
      source: coronahack, folders, siim, phantom, or 'table' for a saved table CSV
      root: the dataset folder
      task: the source's task (default: the model's task, or `folders`)
      out: output folder (default: RUN_DIR/eval-<source>-<root name>)
      classes: map data classes onto the model's, e.g. 'COVID-19->Covid-19,Normal->No_findings';
               classes the model does not know are counted in the report, not scored
      split: all, or only the source's own train / valid / test images
      n_boot: bootstrap resamples for the confidence intervals (0: none)
      gradcam: how many images get a Grad-CAM heatmap (0: none)
      precision: auto (chosen by the machine), fp32, bf16 or fp16, as for predict
      max_pixels: larger images (width x height, from the header) are left out, never decoded
      source_options: source options, e.g. --kaggle-split false (coronahack)
    """
    set_max_pixels(as_int(max_pixels, "max-pixels", 1))
    result = evaluate(str(model_dir), str(source), str(root), task=task, out=out, classes=classes,
                      split=as_choice(split, ["all", "train", "valid", "test"], "split"), n_boot=as_int(n_boot, "n-boot", 0),
                      seed=OPTIONS["seed"].coerce(seed), bs=OPTIONS["bs"].coerce(bs), n_gradcam=as_int(gradcam, "gradcam", 0),
                      precision=OPTIONS["precision"].coerce(precision), **source_options)
    print("\n".join(md_table(["split", "images", *[k.replace("_", " ") for k in HEADLINE]],
                              [["test", result["test"]["n"], *[with_ci(result["test"], k) for k in HEADLINE]]])))
    for name, info in result["unknown_classes"].items():
        print(f"not scored: {info['images']} images of class {name}, unknown to the model")
    print(f"wrote {result['out']}/report.md")
    print(f"added this evaluation to the model card: {result['card']}")
    return 0


def compare_command(*run_dirs, out=None):
    """Compare runs: a markdown table of their differing configuration and headline metrics.

    Args:
      run_dirs: run folders (or a folder holding run folders)
      out: also write the table to this markdown file
    """
    df = compare(*run_dirs, out=out)
    print(compare_markdown(df))
    if out: print(f"\nwrote {out}")
    return 0
