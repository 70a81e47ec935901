"""DenseNet121 on SIIM-FISABIO-RSNA (DICOM, study level): binary negative vs the rest (balanced), or 4-class.

Reproduces the SIIM experiment: study-level labels (`--task binary`: Negative for Pneumonia vs the three
other appearances, balanced by drawing a class-balanced sample of `sample_size` images, default 3000
(at most twice the Negative count, about 3350 on the full competition data); `--task 4class`: Negative,
Typical, Indeterminate, Atypical, every image), one frontal image per study, a 70/20/10 split by patient,
an ImageNet DenseNet121 trained whole for up to 20 epochs with early stopping (`patience` epochs without
a better valid loss; the best weights kept), Adam at lr 3e-4. The original used Adam with amsgrad:
fastai's Adam has no amsgrad and `training.train` takes only its named optimizers (`opt`: adamw, adam,
sgd), so this is fastai's Adam without weight decay, in fit_one_cycle. Report: metrics, confusion
matrix, Grad-CAM (report.md).
"""
from cxr_fast.apps import recipes
from cxr_fast.training.run import train

BALANCED = {"binary": 3000}  # task -> default class-balanced sample size (None: every image)


def run(data="data/siim", out="runs/densenet121-siim", arch="densenet121", task="binary", sample_size=None, multi_image="first-frontal",
        epochs=20, patience=5, lr=3e-4, opt="adamw", wd=0.0, valid_pct=0.2, test_pct=0.1, bs=32, size=224,
        aug="cxr", pretrained=True, seed=42, overwrite=False, resume=False, quick=False):
    """An ImageNet DenseNet121 on SIIM study-level labels, early-stopped.

    task: binary or 4class; sample_size: a class-balanced sample of this many images (default: 3000 for
    binary, every image for 4class; 0: every image); multi_image: skip, first-frontal or all."""
    root = recipes.need_data(data, "siim")
    fit = recipes.fit_options(quick, arch=arch, opt=opt, wd=wd, bs=bs, size=size, aug=aug, patience=patience,
                              monitor="valid_loss", pretrained=pretrained, seed=seed, overwrite=overwrite,
                              resume=resume, valid_pct=valid_pct, test_pct=test_pct)
    sample_size = BALANCED.get(task) if sample_size is None else (sample_size or None)
    table = recipes.load_data(root, "siim", task, quick, sample_size=sample_size, multi_image=multi_image,
                              valid_pct=valid_pct, test_pct=test_pct, seed=seed)
    plan = [{"train": "all", "epochs": recipes.epochs(quick, epochs), "lr": lr}]
    return recipes.headline(train(table=table, out=out, plan=plan, **fit))
