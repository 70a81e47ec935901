"""Multi-label COVID-19 / Pneumonia / Normal (sigmoid outputs): ResNet18 and VGG16, BCE vs focal loss, compared.

Reproduces the multi-label experiment: CoronaHack's three labels as separate 0/1 targets (a COVID-19
image is also Pneumonia; coronahack task `multilabel`), an ImageNet ResNet18 and VGG16 each trained with
BCE-with-logits and with sigmoid focal loss (alpha 1, gamma 2), 10 epochs at lr 1e-3: four runs
(OUT/<arch>-<loss>) with per-label metrics (thresholds tuned on valid; report.md), OUT/comparison.md,
and OUT/<run>/predictions.csv for an unlabelled folder (default: the Kaggle test folder of --data).
The heads keep the single-label recipes' hidden widths (resnet18 380, vgg16 4300); fastai's Adam, wd 0.
"""
from pathlib import Path

from cxr_fast.apps import recipes
from cxr_fast.core.args import as_list
from cxr_fast.inference.inputs import collect_inputs
from cxr_fast.inference.predictor import predict
from cxr_fast.data.sources.coronahack import find_image_dirs
from cxr_fast.training.run import train

HIDDEN = {"resnet18": 380, "vgg16": 4300}  # the course's head widths; other archs: fastai's 512


def run(data="data/coronahack", out="runs/multilabel", archs="resnet18,vgg16", losses="bce,focal", focal_alpha=1.0,
        focal_gamma=2.0, lr=1e-3, epochs=10, trains="all", bs=32, size=224, aug="cxr", wd=0.0, valid_pct=0.2,
        predict_dir=None, pretrained=True, seed=42, overwrite=False, resume=False, quick=False):
    """One run per arch x loss on CoronaHack's multi-label task, compared; predictions for `predict_dir`.

    trains: what the single stage trains (all, head, layers=A+B); predict_dir: a folder of images to
    predict (default: the CoronaHack test folder under `data`)."""
    root = recipes.need_data(data, "coronahack")
    fits = {a: recipes.fit_options(quick, arch=a, hidden=[HIDDEN[a]] if a in HIDDEN else None, wd=wd, bs=bs, size=size,
                                   aug=aug, pretrained=pretrained, seed=seed, overwrite=overwrite,
                                   resume=resume, valid_pct=valid_pct)
            for a in as_list(archs, "archs")}
    table = recipes.load_data(root, "coronahack", "multilabel", quick, valid_pct=valid_pct, seed=seed)
    inputs, _ = collect_inputs([predict_dir or find_image_dirs(root)["TEST"]])
    inputs = inputs[:16] if quick else inputs
    plan = [{"train": trains, "epochs": recipes.epochs(quick, epochs), "lr": lr}]
    results = {}
    for arch, fit in fits.items():
        for loss in as_list(losses, "losses"):
            run_dir = Path(out) / f"{arch}-{loss}"
            results[run_dir.name] = train(table=table, out=run_dir, plan=plan, loss=loss, focal_alpha=focal_alpha,
                                          focal_gamma=focal_gamma, **fit)
            predict(run_dir / "model", inputs, out=run_dir / "predictions.csv")
    return {**{k: recipes.headline(r) for k, r in results.items()}, "comparison": recipes.compare_runs(out, results)}
