"""`audit`: the shortcut audit of a dataset or a run."""
from pathlib import Path

from ..apps.audit.core import audit, is_run_dir
from ..core.errors import CxrError
from ..data.images import MAX_PIXELS, set_max_pixels


def audit_command(source, root=None, task=None, out=None, probes=True, gradcam=True, counterfactual=True,
                  probe_size=None, probe_epochs=None, folds=5, seed=0, valid_pct=0.2, test_pct=0.2, classes=None,
                  max_pixels=MAX_PIXELS, **source_options):
    """Audit a dataset or a trained run for shortcuts: does the label show in the file header, the image border,
    the source? Writes OUT/audit.json and OUT/audit.md and prints the verdict; exits 0 whatever it finds.

    python -m cxr_fast audit SOURCE ROOT --task TASK --out DIR     (any source `table` reads; several joined by '+')
    python -m cxr_fast audit RUN_DIR [--out DIR]                   (default DIR: RUN_DIR/audit)

    Options: --probes true|false (pixel probes: short trainings on the border only and the central field only;
    --probe-size 128 --probe-epochs 3), --gradcam true|false (a run: Grad-CAM mass outside the central field),
    --counterfactual true|false (a run: its held-out images stored and acquired other ways, how far it moves),
    --max-pixels N (larger images are unreadable rows, never decoded), --folds 5 (file facts' patient-grouped CV), --seed, --valid-pct, --test-pct 0.2 (a held-out split for the
    probes where the source has none), --classes, and the source's own options."""
    from ..core.args import as_bool, as_float, as_int
    set_max_pixels(as_int(max_pixels, "max-pixels", 1))
    if is_run_dir(source) and out is None: out = Path(str(source)).expanduser() / "audit"
    if out is None or str(out).strip() == "": raise CxrError("--out DIR is required (where audit.json and audit.md go)")
    options = {k.replace("-", "_"): v for k, v in source_options.items()}
    result = audit(source, root, task, out=out, probes=as_bool(probes, "probes"), gradcam=as_bool(gradcam, "gradcam"),
                   counterfactual=as_bool(counterfactual, "counterfactual"),
                   probe_size=None if probe_size is None else as_int(probe_size, "probe-size", 16),
                   probe_epochs=None if probe_epochs is None else as_int(probe_epochs, "probe-epochs", 1),
                   folds=as_int(folds, "folds", 2), seed=as_int(seed, "seed", 0),
                   valid_pct=as_float(valid_pct, "valid-pct", 0, 0.9), test_pct=as_float(test_pct, "test-pct", 0, 0.9),
                   classes=classes, quiet=False, **options)
    print(f"verdict ({result['verdict']['level']}): {result['verdict']['text']}")
    if result["verdict"].get("advice"): print(result["verdict"]["advice"])
    print(f"audit: {Path(out) / 'audit.md'}, {Path(out) / 'audit.json'}")
    return 0
