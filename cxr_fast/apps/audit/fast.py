"""The audit's fast parts, which `train` runs on every table: file facts and sources (headers only), the verdict,
and what the model card keeps of it. No training here, so `training` can import it (core.py adds the probes)."""
from pathlib import Path

from ...core.errors import DataError
from ...core.jsonio import write_json
from ...core.jsonio import write_atomic
from .file_facts import file_facts, read_facts
from .sources import source_audit
from .verdict import render, verdict


def fast_audit(table, folds=5, seed=0):
    """The audit's fast parts (file facts and sources) on a table: what `train` runs by default. A table the file
    facts cannot judge (a class with too few patients...) gets its reason as the verdict, never an exception."""
    result, limitations = {}, []
    try:
        facts = read_facts(table["path"])
        result["file_facts"] = file_facts(table, folds=folds, seed=seed, facts=facts)
        limitations += result["file_facts"].get("limitations", [])
        result["sources"] = source_audit(table, facts=facts, seed=seed)
    except DataError as e:
        result["file_facts"] = {"error": str(e)}
        limitations.append(f"file facts not run: {e}")
    result["limitations"] = limitations
    result["verdict"] = verdict(succeeded(result.get("file_facts")), result.get("sources"))
    return result


def succeeded(part):
    "A test's result, or None when it was not run or failed (its dict holds an `error`)."
    return None if not part or part.get("error") else part


def summary(result):
    "What the model card and model.json keep of an audit: the verdict and the per-class AUROCs."
    ff = succeeded(result.get("file_facts")) or {}
    pixel = succeeded(result.get("pixel")) or {}
    return {"level": result["verdict"]["level"], "verdict": result["verdict"]["text"],
            "file_facts_auroc": ff.get("auroc"), "acquisition_auroc": (ff.get("acquisition") or {}).get("auroc"),
            "border_only_auroc": (pixel.get("border_only") or {}).get("auroc"),
            "counterfactual": counterfactual_summary(succeeded(result.get("counterfactual")))}


def counterfactual_summary(cf):
    "What the card keeps of the acquisition counterfactual: the share of predictions each change flipped."
    if not cf: return None
    return {"n": cf["n"], "worst": cf["worst"], "flipped": {c: m["flipped"] for c, m in cf["changes"].items()}}


def write_audit(result, out):
    "DIR/audit.json and DIR/audit.md (atomic)."
    out = Path(out)
    write_json(out / "audit.json", result)
    write_atomic(out / "audit.md", lambda p: p.write_text(render(result)))
    return out
