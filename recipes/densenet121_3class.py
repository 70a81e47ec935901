"""DenseNet121, COVID-19 / Pneumonia / Normal: feature extraction 4 epochs vs + fine-tuning the top 4 more, side by side.

Reproduces the transfer-learning experiment on class folders (DarkCovidNet, Khulna): an 80/10/10 split by
patient, an ImageNet DenseNet121 used as a frozen feature extractor (head only, 4 epochs at `lr`), then
the top of the network (the last `fine_tune_groups` layer groups: denseblock3-4 and the head) fine-tuned
4 more epochs at `fine_tune_lr`. Two runs from the same seed: OUT/feature-extraction (stage 1 alone) and
OUT/fine-tuning (stage 1, then stage 2), each evaluated on its final weights (`save_best=False`) with
precision/recall/F1, confusion matrix and Grad-CAM (report.md); OUT/comparison.md side by side.
--classes renames/merges folders, e.g. 'Covid-19->COVID-19,No_findings->Normal,Pneumonia'.
"""
from pathlib import Path

from cxr_fast.apps import recipes
from cxr_fast.training.run import train


def run(data="data/darkcovidnet", out="runs/densenet121-3class", arch="densenet121", classes=None, epochs=4, lr=1e-3, fine_tune_epochs=4,
        fine_tune_lr=1e-4, fine_tune_groups=2, valid_pct=0.1, test_pct=0.1, bs=32, size=224, aug="cxr",
        save_best=False, pretrained=True, seed=42, frozen_features=False, overwrite=False, resume=False,
        quick=False):
    """Feature extraction vs feature extraction + fine-tuning of an ImageNet DenseNet121 on three classes.

    frozen_features: the feature-extraction stage trains the head on the frozen body's features, computed once
    (faster; no augmentation and no BatchNorm training in the body there)."""
    root = recipes.need_data(data, "darkcovidnet")
    fit = recipes.fit_options(quick, arch=arch, bs=bs, size=size, aug=aug, save_best=save_best,
                              pretrained=pretrained, seed=seed, overwrite=overwrite,
                              resume=resume, valid_pct=valid_pct, test_pct=test_pct,
                              frozen_features=frozen_features)
    table = recipes.load_data(root, "folders", "3class", quick, classes=classes, valid_pct=valid_pct,
                              test_pct=test_pct, seed=seed)
    epochs, fine_tune_epochs = recipes.epochs(quick, epochs, fine_tune_epochs)
    extract = {"train": "head", "epochs": epochs, "lr": lr}
    tune = {"train": f"freeze_to={fine_tune_groups}", "epochs": fine_tune_epochs, "lr": fine_tune_lr}
    plans = {"feature-extraction": [extract], "fine-tuning": [extract, tune]}
    results = {name: train(table=table, out=Path(out) / name, plan=plan, **fit) for name, plan in plans.items()}
    return {**{k: recipes.headline(r) for k, r in results.items()}, "comparison": recipes.compare_runs(out, results)}
