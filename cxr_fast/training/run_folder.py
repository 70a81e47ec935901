"""The run folder of `train`: refusing to overwrite a run unasked, the saved configuration a resume is checked
against, config.json, the run's table (and what it left out), the fast shortcut audit, and model.json's contents.

A config.json written by an older cxr_fast lacks the options added since: `saved_config` reads each missing one as
its default, so such a run still resumes with the same options.
"""
import hashlib
import shutil
from collections import Counter
from pathlib import Path

from fastai.vision.all import imagenet_stats

from ..core.errors import CxrError
from ..core.jsonio import read_json, write_json
from ..data.labels import classes_of, is_multilabel
from ..data.load import load_table
from ..data.table import summarize, validate_table
from ..evaluation.card import data_facts
from ..models.registry import default_head, input_spec
from .checkpoints import check_resume
from .imbalance import subsample_majority_train
from .losses import resolve_loss_name
from .members import MEMBERS_DIR
from .options import OPTIONS


def table_sha1(table):
    "A digest of what a run trains and evaluates on (paths, splits, labels), to refuse resuming on other data."
    cols = ["path", "split", *(classes_of(table) if is_multilabel(table) else ["label"])]
    return hashlib.sha1(table[cols].to_csv(index=False).encode()).hexdigest()


def prepare_run_dir(run_dir, config):
    "The saved configuration when resuming (None for a fresh run); refuses to overwrite a run unasked."
    saved = saved_config(run_dir / "config.json")
    if config["resume"]:
        if saved is not None: check_resume(saved, config, run_dir)
        return saved
    if saved is not None and not config["overwrite"]:
        raise CxrError(f"{run_dir} already holds a run; pass --resume true to continue it, --overwrite true to "
                       f"start it again, or another --out")
    for name in ("checkpoints/last.pth", "checkpoints/best.pth", "history.csv"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / MEMBERS_DIR, ignore_errors=True)  # an ensemble's members (members.py) start again too
    return None


def saved_config(path):
    "A run's config.json (None when there is none), each option it lacks (an older cxr_fast's) read as its default."
    saved = read_json(path)
    if saved is None: return None
    return {**{name: o.coerce(o.default) for name, o in OPTIONS.items() if name not in saved}, **saved}


def write_config(config, run_dir):
    "config.json: the resolved configuration (atomic)."
    write_json(run_dir / "config.json", config)


def get_table(config, table, source_options):
    "The canonical table: the one given, or data.load_table from source/root/task; majority subsampled if asked."
    if table is None:
        if not (config["source"] and config["root"]): raise CxrError("give SOURCE and ROOT (and --task), or table=")
        table = load_table(config["source"], config["root"], config["task"], config["valid_pct"], config["test_pct"],
                           config["seed"], config["classes"], config["dedup"], **source_options)
    else:
        table = validate_table(table.copy())
    if config["subsample_majority"] is not None and config["subsample_majority"] < 1:
        table = subsample_majority_train(table, config["subsample_majority"], config["seed"])
    return table


DROPPED_KINDS = ("missing_file", "unreadable", "not_an_image", "unknown_label")  # table problems that leave a file out


def dropped_line(table, run_dir):
    "One console line: how many files the table left out and where they are listed (None when none was)."
    dropped = [p for p in table.attrs.get("problems", []) if p["kind"] in DROPPED_KINDS]
    if not dropped: return None
    kinds = Counter(p["kind"].replace("_", " ") for p in dropped)
    return (f"left out {len(dropped)} file(s) ({', '.join(f'{k} {n}' for k, n in kinds.items())}): listed in "
            f"{run_dir / 'table.json'} and, at the end of the run, {run_dir / 'report.md'}")


def default_thresholds(classes, multilabel):
    "0.5 per class (multi-label) or for the positive class (binary); none for more classes."
    if multilabel: return {c: 0.5 for c in classes}
    return {"positive": 0.5} if len(classes) == 2 else {}


def audit_summary(run_dir):
    "The shortcut audit's verdict for model.json and the card (shortcuts.fast.summary), when the run has an audit.json."
    saved = read_json(Path(run_dir) / "audit.json") if run_dir is not None else None
    if not (saved and saved.get("verdict")): return None
    from ..apps.audit.fast import summary
    return summary(saved)


def model_meta(config, table, learn, results):
    "model.json for the model dir (models/folder.py's REQUIRED_KEYS and the rest of the DESIGN contract)."
    classes, multilabel = classes_of(table), is_multilabel(table)
    return {"arch": config["arch"], "head": default_head(config["hidden"], config["dropout"], config["concat_pool"]),
            "n_out": int(learn.dls.c), "classes": classes, "task": table.attrs.get("task") or config["task"],
            "multilabel": multilabel, "loss": resolve_loss_name(config["loss"], multilabel),
            "loss_options": {"label_smoothing": config["label_smoothing"], "focal_alpha": config["focal_alpha"],
                             "focal_gamma": config["focal_gamma"], "class_weights": config.get("class_weight_values")},
            "img_size": config["size"], "resize_method": config["resize_method"],
            "preprocessing": config["preprocessing"], "jpeg_quality": config.get("jpeg_quality"), "tta": config["tta"],
            "normalize": {"mean": list(imagenet_stats[0]), "std": list(imagenet_stats[1])},
            "input_adapter": input_spec(config["arch"]), "weights": getattr(learn, "start_weights", None),
            "thresholds": (results or {}).get("thresholds") or default_thresholds(classes, multilabel),
            "data": {"source": table.attrs.get("source") or config["source"], "task": config["task"],
                     "split_method": table.attrs.get("split_method", "as given"),
                     "counts": summarize(table).to_dict(), **data_facts(table)},
            "members": config["members"],
            "training": {"pretrained": config["pretrained"], "weights": config["weights"], "plan": config["plan"],
                         "seed": config["seed"], "balance_sources": config.get("balance_sources", False)},
            "calibration": (results or {}).get("calibration") or {"method": "none"},
            "operating_point": (results or {}).get("operating_point"),
            "audit": audit_summary(getattr(learn, "path", None)),
            "metrics": {k: v for k, v in (results or {}).items() if k not in ("thresholds", "calibration",
                                                                              "operating_point")}}



def run_fast_audit(table, run_dir):
    """The shortcut audit's fast parts (file facts, sources: headers only) on the training table: RUN_DIR/audit.json
    and audit.md; the verdict goes into report.md and the model card, and is printed."""
    try:
        from ..apps.audit.fast import fast_audit, write_audit
        result = {"subject": f"training table of {run_dir}", **fast_audit(table)}
    except Exception as e:  # a diagnostic must not stop training: say so and go on
        print(f"shortcut audit not run: {type(e).__name__}: {e}")
        return None
    write_audit(result, run_dir)
    print(f"shortcut audit ({result['verdict']['level']}): {result['verdict']['text']} ({run_dir / 'audit.md'})")
    if result["verdict"].get("advice"): print(result["verdict"]["advice"])
    return result


