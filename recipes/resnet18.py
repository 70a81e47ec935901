"""ResNet18, Infected vs Normal: FC only vs conv1+layer1+layer3+FC vs the entire network, compared.

Reproduces the university-course experiment: an ImageNet ResNet18 whose old FC layer is replaced by a
hidden layer (`hidden`, 380 units; the VGG16 variant used 4300, see recipes/vgg16.py) and a 2-way output,
trained 10 epochs at lr 1e-3 in three separate runs from the same pretrained start, each freezing a
different part (OUT/fc, OUT/fc-conv1-layer1-layer3, OUT/all); accuracy, F1, confusion matrix and
best/worst images per run (report.md), and OUT/comparison.md side by side.

The data: a CoronaHack download (Normal vs Pneumonia; chosen when a Chest_xray_Corona_Metadata.csv is
below --data) or class folders under train/valid/test (--classes merges them, e.g.
'COVID-19->Infected,Pneumonia->Infected,Normal'). fit_one_cycle stands in for the course's constant rate;
the head is fastai's (pooling, BatchNorm, dropout) with one hidden layer; fastai's Adam, no weight decay (wd=0).
"""
from pathlib import Path

from cxr_fast.apps import recipes
from cxr_fast.training.run import train


def run(data="data/coronahack", out="runs/resnet18", arch="resnet18", classes=None, hidden=380, dropout=0.5, lr=1e-3, epochs=10,
        layers="conv1,layer1,layer3", bs=32, size=224, aug="cxr", wd=0.0, valid_pct=0.2, pretrained=True,
        seed=42, frozen_features=False, overwrite=False, resume=False, quick=False):
    """Three runs of an ImageNet ResNet18 with a `hidden`-unit head: FC only, `layers` + FC, everything.

    classes: class mapping, e.g. 'COVID-19->Infected,Pneumonia->Infected,Normal'; layers: the conv layers the
    second run trains with the FC; valid_pct: carved by patient when the data has no valid split;
    frozen_features: the FC-only run trains the head on the frozen body's features, computed once (faster; no
    augmentation and no BatchNorm training in the body there)."""
    root = recipes.need_data(data, "coronahack")
    fit = recipes.fit_options(quick, arch=arch, hidden=[hidden], dropout=dropout, wd=wd, bs=bs, size=size,
                              aug=aug, pretrained=pretrained, seed=seed, overwrite=overwrite,
                              resume=resume, valid_pct=valid_pct,
                              frozen_features=frozen_features)
    source, task = recipes.binary_source(root)
    table = recipes.load_data(root, source, task, quick, classes=classes, valid_pct=valid_pct, seed=seed)
    names = [n.strip() for n in str(layers).replace("+", ",").split(",") if n.strip()]
    stages = {"fc": "head", "fc-" + "-".join(names): "layers=" + "+".join(names), "all": "all"}
    n = recipes.epochs(quick, epochs)
    results = {name: train(table=table, out=Path(out) / name, plan=[{"train": what, "epochs": n, "lr": lr}], **fit)
               for name, what in stages.items()}
    return {**{k: recipes.headline(r) for k, r in results.items()}, "comparison": recipes.compare_runs(out, results)}
