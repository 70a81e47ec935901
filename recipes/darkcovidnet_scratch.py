"""darkcovidnet-scratch: the best from-scratch configuration found for DarkCovidNet (3-class or binary).

Trains on all of ROOT (a 10% validation split, by patient, is carved out inside to pick the best epoch)
and leaves RUN_DIR/model, which `predict` loads. `make bench-accuracy` measures this same configuration
with patient-grouped 5-fold cross-validation (the paper's protocol). Fits in 30 minutes on a 2-core CPU.
"""
from cxr_fast.training import train

TASK_CLASSES = {  # task -> the DarkCovidNet folders used, as class names
    "3class": "Covid-19,No_findings,Pneumonia",
    "binary": "Covid-19,No_findings",
}
BEST = dict(arch="resnet18", pretrained=False, size=160, bs=32, epochs=24, lr=3e-3, opt="adamw", aug="cxr",
            loss="ce", label_smoothing=0.1, bf16=True, cache=True, monitor="valid_loss")


def run(data="data/darkcovidnet", out="runs/darkcovidnet-scratch", task="3class", quick=False, **overrides):
    """Train the best from-scratch DarkCovidNet model on all of DATA (task 3class or binary)."""
    config = {**BEST, **overrides}
    if quick: config.update(size=32, epochs=1, bs=8)
    return train("folders", data, "folders", classes=TASK_CLASSES[task], valid_pct=0.1, test_pct=0.0,
                 out=out, overwrite=True, **config)
