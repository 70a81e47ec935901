"""ResNet50 on CoronaHack, Normal vs COVID-19 (Normal subsampled to balance): frozen body 5 epochs, then all 5.

Reproduces the fastai CoronaHack experiment: coronahack task `normal-vs-covid` with the Normal patients
subsampled to 1/22 (`balance`) so both classes are about the same size, every row in one pool
(`kaggle_split=False`) split 90/10 into train/valid by patient (no test), batch size 8, 256 px, flips and
10-degree rotations (aug preset `cxr-flip`), Adam (fastai's, decoupled weight decay 1e-4) with gradient
clipping 0.1; stage 1 trains the head on the frozen ImageNet body, fit_one_cycle 5 epochs at max lr 0.01;
stage 2 unfreezes everything, 5 epochs at 1e-3. report.md has the loss and accuracy curves (curves.png).
"""
from cxr_fast.apps import recipes
from cxr_fast.training.run import train


def run(data="data/coronahack", out="runs/resnet50-coronahack", arch="resnet50", balance=1 / 22, valid_pct=0.1, bs=8, size=256,
        aug="cxr-flip", head_epochs=5, head_lr=0.01, all_epochs=5, all_lr=1e-3, clip=0.1, wd=1e-4, opt="adamw",
        pretrained=True, seed=42, frozen_features=False, overwrite=False, resume=False, quick=False):
    """Two-stage fine-tuning of an ImageNet ResNet50 on balanced Normal vs COVID-19.

    balance: fraction of Normal patients kept; opt: adamw is fastai's Adam (decoupled weight decay);
    frozen_features: the frozen-body stage trains the head on the frozen body's features, computed once (faster; no
    augmentation and no BatchNorm training in the body there)."""
    root = recipes.need_data(data, "coronahack")
    fit = recipes.fit_options(quick, arch=arch, bs=bs, size=size, aug=aug, clip=clip, wd=wd, opt=opt,
                              pretrained=pretrained, seed=seed, overwrite=overwrite,
                              resume=resume, valid_pct=valid_pct, test_pct=0.0,
                              frozen_features=frozen_features)
    table = recipes.load_data(root, "coronahack", "normal-vs-covid", quick, balance=balance, kaggle_split=False,
                              valid_pct=valid_pct, test_pct=0.0, seed=seed)
    head_epochs, all_epochs = recipes.epochs(quick, head_epochs, all_epochs)
    plan = [{"train": "head", "epochs": head_epochs, "lr": head_lr}, {"train": "all", "epochs": all_epochs, "lr": all_lr}]
    return recipes.headline(train(table=table, out=out, plan=plan, **fit))
