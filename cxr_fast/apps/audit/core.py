"""`audit`: did a model (or would a model) learn the lungs or the hospital?

    python -m cxr_fast audit folders ../shared/data/darkcovidnet --task folders --out runs/audit-dark
    python -m cxr_fast audit runs/r18 --out runs/r18/audit          # a trained run (its table and model)
    cxr_fast.audit("folders", "data/darkcovidnet", task="folders", out="runs/audit")

The tests: file facts (file_facts.py: headers only, seconds), sources (sources.py, when several are joined),
pixel probes (probes.py: short trainings on the border only and on the central field only) and, for a run, where
its model looks (Grad-CAM mass outside the central field). Writes DIR/audit.json and DIR/audit.md, prints the
verdict (verdict.py), and returns the audit.json dict. A finding is not an error: the command exits 0 whatever it
finds; bad input (one class, no such data) is a one-line error.
"""
from pathlib import Path

from ...core.errors import CxrError
from ...core.jsonio import read_json
from ...data.labels import label_strings
from ...data.table import read_table
from .fast import fast_audit, succeeded, summary, write_audit
from .file_facts import require_two_classes
from .verdict import verdict

GRADCAM_MAX_IMAGES = 200  # Grad-CAM over at most this many held-out images (a CPU minute or two)


def is_run_dir(path):
    "A training run folder: config.json beside table.csv (what `train` writes)."
    path = Path(str(path)).expanduser()
    return (path / "config.json").is_file() and (path / "table.csv").is_file()


def dataset_table(source, root, task, probes, valid_pct, test_pct, seed, classes, source_options):
    "The table to audit; without probes, no image is decoded (file facts read headers; unreadable files are reported)."
    from ...data.load import load_table
    if root is None: raise CxrError(f"{source}: not a run folder (config.json + table.csv); give SOURCE ROOT --task")
    return load_table(source, root, task, valid_pct=valid_pct, test_pct=test_pct, seed=seed, classes=classes,
                      dedup="off", check=bool(probes), **source_options)


def run_figures(run_dir):
    "A run's own per-class AUROC on its held-out split (test, else valid), from metrics.json."
    metrics = read_json(Path(run_dir) / "metrics.json") or {}
    split = "test" if metrics.get("test") else "valid"
    per_class = (metrics.get(split) or {}).get("per_class") or {}
    return {"split": split, "auroc": {c: v.get("auc") for c, v in per_class.items()},
            "accuracy": (metrics.get(split) or {}).get("accuracy")}


def audit(source, root=None, task=None, *, out=None, probes=True, gradcam=True, counterfactual=True, probe_size=None,
          probe_epochs=None, folds=5, seed=0, valid_pct=0.2, test_pct=0.2, classes=None, table=None, quiet=True,
          **source_options):
    """Audit a dataset (SOURCE ROOT --task, sources joined by '+', or `table=`) or a trained run (`audit(RUN_DIR)`).

    probes: train the pixel probes (full / border only / central field only; small and short, see probes.py);
    gradcam: for a run, the share of Grad-CAM mass outside the central field over its held-out split;
    counterfactual: for a run, its held-out images stored and acquired other ways (counterfactual.py), how far the
    model moves; a run's audit also goes into its model card (model.json `audit`);
    probe_size, probe_epochs: the probes' image size and epochs (default 128 px, 3 epochs);
    folds: the file facts' patient-grouped cross-validation folds; out: where audit.json and audit.md go.
    Returns the audit.json dict (`file_facts.auroc` = {class: AUROC}, `pixel`, `sources`, `verdict`...)."""
    from . import probes as probing
    run_dir = Path(str(source)).expanduser() if table is None and is_run_dir(source) else None
    limitations = []
    if run_dir is not None:
        table, config = read_table(run_dir / "table.csv"), read_json(run_dir / "config.json") or {}
        subject = f"run {run_dir}"
    else:
        if table is None:
            table = dataset_table(source, root, task, probes, valid_pct, test_pct, seed, classes, source_options)
        config, subject = None, f"{source} {root or ''} {task or ''}".strip()
    require_two_classes(table, subject)  # before fast_audit, which turns a DataError into a limitation
    result = {"subject": subject, **fast_audit(table, folds, seed)}
    limitations += result.pop("limitations")
    if probes:
        probe_config = (probing.run_probe_config(config, probe_size, probe_epochs) if config
                        else probing.default_probe_config(probe_size, probe_epochs))
        workdir, tmp = probing.probe_workdir(out)
        with tmp:
            try:
                result["pixel"] = probing.pixel_probes(table, probe_config, workdir, seed=seed, quiet=quiet)
            except CxrError as e:
                result["pixel"] = {"error": str(e)}
                limitations.append(f"pixel probes not run: {e}")
        if (result.get("pixel") or {}).get("split") == "valid":
            limitations.append("the table has no test split: the pixel probes are scored on the validation split")
    else:
        limitations.append("pixel probes not run (--probes false)")
    if run_dir is not None:
        result["run"] = run_figures(run_dir)
        if gradcam: result["gradcam"] = run_gradcam(run_dir, table, limitations)
        if counterfactual: result["counterfactual"] = run_counterfactual(run_dir, table, limitations)
    full = (result.get("run") or {}).get("auroc") or ((succeeded(result.get("pixel")) or {}).get("full") or {}).get("auroc")
    result["verdict"] = verdict(succeeded(result.get("file_facts")), result.get("sources"), succeeded(result.get("pixel")),
                                succeeded(result.get("gradcam")), full, succeeded(result.get("counterfactual")))
    result["limitations"] = limitations
    if out is not None: write_audit(result, out)
    if run_dir is not None: record_in_card(run_dir, result)
    return result


def record_in_card(run_dir, result):
    "The run audit's summary (verdict, counterfactual) into the run's model.json and MODEL_CARD.md."
    from ...models.folder import read_model_json, write_model_json
    model_dir = run_dir / "model"
    if (model_dir / "model.json").is_file():
        write_model_json(model_dir, {**read_model_json(model_dir), "audit": {**summary(result), "of": "the run"}})


def run_counterfactual(run_dir, table, limitations):
    "The acquisition counterfactual (counterfactual.py) over the run's held-out split, as predict runs the model."
    from ...inference.predictor import Predictor
    from .counterfactual import MAX_IMAGES, counterfactual
    from .probes import held_out_split
    split = held_out_split(table)
    rows = table[table["split"] == split].sample(frac=1, random_state=0)  # a mix of classes when capped
    try:
        out = counterfactual(Predictor.from_dir(run_dir / "model"), rows["path"], label_strings(rows))
    except CxrError as e:
        limitations.append(f"acquisition counterfactual not measured: {e}")
        return {"error": str(e)}
    if len(rows) > MAX_IMAGES: limitations.append(f"counterfactual over {MAX_IMAGES} of {len(rows)} {split} images")
    return {**out, "split": split}


def run_gradcam(run_dir, table, limitations):
    "Grad-CAM's share outside the central field over the run's test split (valid when it has none)."
    from .probes import gradcam_outside_share, held_out_split
    split = held_out_split(table)
    if split == "valid": limitations.append("the run has no test split: Grad-CAM is measured on its validation split")
    paths = table.loc[table["split"] == split, "path"].tolist()
    try:
        out = gradcam_outside_share(run_dir / "model", paths, max_images=GRADCAM_MAX_IMAGES)
    except CxrError as e:
        limitations.append(f"Grad-CAM not measured: {e}")
        return {"error": str(e)}
    if len(paths) > GRADCAM_MAX_IMAGES: limitations.append(f"Grad-CAM over the first {GRADCAM_MAX_IMAGES} of "
                                                           f"{len(paths)} {split} images")
    return {**out, "split": split}
