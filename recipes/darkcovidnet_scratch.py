"""DarkCovidNet from scratch (3class or binary): the best configuration found here; fits in 30 CPU minutes.

Trains on all of DATA (10% of its patients carved out as validation, to pick the best epoch) and leaves
OUT/model for `predict`. `make bench-accuracy` measures this same configuration (BEST) with
patient-grouped 5-fold cross-validation, the protocol of Ozturk et al. 2020. No ImageNet weights.
"""
from cxr_fast.apps import recipes
from cxr_fast.core.errors import CxrError
from cxr_fast.training.run import train

TASK_CLASSES = {"3class": "Covid-19,No_findings,Pneumonia", "binary": "Covid-19,No_findings"}
TASK_OVERRIDES = {"binary": {"class_weights": "auto"}}  # 99 Covid-19 vs 400 No_findings: unweighted CE collapsed
BEST = dict(arch="resnet18", pretrained=False, size=160, bs=32, epochs=16, lr=2e-3, opt="adamw", aug="cxr",
            preprocessing="none", loss="ce", label_smoothing=0.1, cache=True, monitor="valid_loss")
# precision: train's default, auto (bf16 on a CPU with native bf16, else fp32; `recipe ... --precision` to choose):
# the CV below ran bf16 on a CPU with AVX-512 BF16; emulated bf16 (an AVX2 CPU) is ~8x slower (issue #13)


def run(data="data/darkcovidnet", out="runs/darkcovidnet-scratch", task="3class", arch=BEST["arch"],
        size=BEST["size"], bs=BEST["bs"], epochs=BEST["epochs"], lr=BEST["lr"], preprocessing=BEST["preprocessing"],
        label_smoothing=BEST["label_smoothing"], class_weights=None, bf16=None, valid_pct=0.1, seed=42,
        overwrite=True, quick=False):
    """Train the from-scratch DarkCovidNet model on all of DATA: task 3class (Covid-19/No_findings/Pneumonia)
    or binary (Covid-19 vs No_findings). class_weights: None = the task's default (binary: 'auto');
    bf16: deprecated alias of `recipe --precision` (None: the precision in force, auto by default)."""
    if task not in TASK_CLASSES: raise CxrError(f"--task must be one of {', '.join(TASK_CLASSES)}, got {task!r}")
    root = recipes.need_data(data, "darkcovidnet")
    weights = TASK_OVERRIDES.get(task, {}).get("class_weights") if class_weights is None else class_weights
    config = {**BEST, "class_weights": weights, "arch": arch, "size": size, "bs": bs, "lr": lr, "preprocessing": preprocessing,
              "label_smoothing": label_smoothing, "bf16": bf16, "seed": seed, "overwrite": overwrite}
    table = recipes.load_data(root, "folders", "folders", quick, classes=TASK_CLASSES[task], valid_pct=valid_pct,
                              test_pct=0.0, seed=seed)
    config = recipes.fit_options(quick, **config)
    return recipes.headline(train(table=table, out=out, **{**config, "epochs": recipes.epochs(quick, epochs)}))
