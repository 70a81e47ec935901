"""VGG16, Infected vs Normal: FC only vs features.10+FC vs eight conv layers+FC vs the entire network, compared.

Reproduces the university-course VGG16 experiment: plain ImageNet VGG16 whose classifier is replaced by
one hidden layer of 4300 units (`hidden`; the original replaced VGG's 4096-wide FC block, so 4300 keeps
its width; fastai's head pools the 512 feature maps first, so it has far fewer weights than 25088x4300)
and a 2-way output, 10 epochs at lr 1e-3, four separate runs from the same pretrained start
(OUT/fc, OUT/fc-features.10, OUT/fc-8conv, OUT/all), each with accuracy, F1, confusion matrix and
best/worst images (report.md), and OUT/comparison.md side by side.

Data as in recipes/resnet18.py: a CoronaHack download (Normal vs Pneumonia) or train/valid/test class
folders with --classes merging them into Infected/Normal. fit_one_cycle stands in for the course's
constant rate; fastai's Adam, no weight decay (wd=0).
"""
from pathlib import Path

from cxr_fast.apps import recipes
from cxr_fast.training.run import train

FEW = "features.0,features.5,features.10,features.12,features.19,features.21,features.26,features.28"


def run(data="data/coronahack", out="runs/vgg16", arch="vgg16", classes=None, hidden=4300, dropout=0.5, lr=1e-3, epochs=10,
        one_layer="features.10", few_layers=FEW, bs=32, size=224, aug="cxr", wd=0.0, valid_pct=0.2, pretrained=True,
        seed=42, frozen_features=False, overwrite=False, resume=False, quick=False):
    """Four runs of an ImageNet VGG16 with a `hidden`-unit head: FC only, `one_layer` + FC, `few_layers` + FC, all.

    classes: class mapping, e.g. 'COVID-19->Infected,Pneumonia->Infected,Normal'; valid_pct: carved by
    patient when the data has no valid split; frozen_features: the FC-only run trains the head on the frozen
    body's features, computed once (faster; no augmentation and no BatchNorm training in the body there)."""
    root = recipes.need_data(data, "coronahack")
    fit = recipes.fit_options(quick, arch=arch, hidden=[hidden], dropout=dropout, wd=wd, bs=bs, size=size, aug=aug,
                              pretrained=pretrained, seed=seed, overwrite=overwrite,
                              resume=resume, valid_pct=valid_pct,
                              frozen_features=frozen_features)
    source, task = recipes.binary_source(root)
    table = recipes.load_data(root, source, task, quick, classes=classes, valid_pct=valid_pct, seed=seed)
    few = [n.strip() for n in str(few_layers).replace("+", ",").split(",") if n.strip()]
    stages = {"fc": "head", f"fc-{one_layer}": f"layers={one_layer}", f"fc-{len(few)}conv": "layers=" + "+".join(few),
              "all": "all"}
    n = recipes.epochs(quick, epochs)
    results = {name: train(table=table, out=Path(out) / name, plan=[{"train": what, "epochs": n, "lr": lr}], **fit)
               for name, what in stages.items()}
    return {**{k: recipes.headline(r) for k, r in results.items()}, "comparison": recipes.compare_runs(out, results)}
