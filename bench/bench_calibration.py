"""Temperature scaling and the operating point on the built-in phantoms, at the demo's scale.

    python bench/bench_calibration.py [--out bench/calibration.json] [--tasks binary,3class,multilabel] [--seed 0]

For each task: 50 phantom patients per class (1-3 images each, 128 px), patient split 60/20/20, ResNet18 from
scratch at 96 px, 8 epochs (the demo's settings), trained with the defaults (--calibrate true, binary:
--target-sensitivity 0.95). Records the fitted temperature, ECE and NLL before and after scaling on valid and test
(the run's metrics.json), test accuracy and AUC with and without the temperature (from the model's fp32 logits,
float64 probabilities, decisions at thresholds mapped through T), and the binary operating point.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cxr_fast.evaluation import calibration as cal
from cxr_fast.inference.predictor import Predictor
from cxr_fast.evaluation.metrics import split_metrics
from cxr_fast.data.table import build_table
from cxr_fast.data.labels import positive_index
from cxr_fast.training.run import train


def logits_of(pred, paths):
    "The model's fp32 logits on `paths`, as float64."
    with torch.no_grad():
        return pred.model(pred.to_input(torch.stack([pred.load(p) for p in paths]))).double().numpy()


def unscaled_thresholds(thresholds, t, classes, multilabel):
    "The thresholds that give the unscaled model the scaled model's decisions."
    if t is None or not thresholds: return thresholds
    if multilabel: return cal.temper_thresholds(thresholds, {c: 1 / v for c, v in t.items()}, classes)
    pos = positive_index(classes)
    p = np.zeros((1, 2))
    p[0, pos], p[0, 1 - pos] = thresholds["positive"], 1 - thresholds["positive"]
    return {"positive": float(cal.temper(p, 1 / t, False)[0, pos])}


def run(task, out, seed):
    "Train one task and measure."
    start = time.time()
    table = build_table("phantom", out / task / "phantoms", task, patients_per_class=50, image_size=128, valid_pct=0.2,
                        test_pct=0.2, seed=seed)
    result = train(table=table, arch="resnet18", pretrained=False, out=out / task / "run", epochs=8, lr=3e-3, size=96,
                   bs=16, seed=seed, overwrite=True)
    row = {"task": task, "seed": seed, "seconds": round(time.time() - start, 1),
           "temperature": result["calibration"].get("temperature"), "note": result["calibration"].get("note")}
    for s in ("valid", "test"):
        c = result[s]["calibration"]
        row[s] = {"n": result[s]["n"], "ece_before": c["before"]["ece"], "ece_after": c["ece"],
                  "nll_before": c["before"]["nll"], "nll_after": c["nll"]}
    pred = Predictor.from_dir(out / task / "run" / "model", precision="fp32")
    test = table[table["split"] == "test"].reset_index(drop=True)
    test.attrs = dict(table.attrs)
    z = logits_of(pred, test["path"].tolist())
    t = result["calibration"].get("temperature")
    t_vec = cal.temperature_vector(t, pred.classes, pred.multilabel)
    scaled, raw = cal.apply_temperature(z, t_vec, pred.multilabel), cal.activation(z, pred.multilabel)
    m_t = split_metrics(test, scaled, pred.classes, pred.multilabel, dict(pred.thresholds), n_boot=0)
    m_0 = split_metrics(test, raw, pred.classes, pred.multilabel,
                        unscaled_thresholds(dict(pred.thresholds), t, pred.classes, pred.multilabel), n_boot=0)
    row["test"].update(accuracy_with_t=m_t["accuracy"], accuracy_without_t=m_0["accuracy"], auc_with_t=m_t["auc"],
                       auc_without_t=m_0["auc"])
    op = result.get("operating_point")
    if op: row["operating_point"] = {k: op[k] for k in ("target_sensitivity", "threshold", "valid", "test", "at_default")}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("calibration.json")))
    ap.add_argument("--runs", default="runs/bench-calibration")
    ap.add_argument("--tasks", default="binary,3class,multilabel")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [run(task, Path(args.runs), args.seed) for task in args.tasks.split(",")]
    Path(args.out).write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(f"{r['task']}: T {r['temperature']}; test ECE {r['test']['ece_before']:.4f} -> {r['test']['ece_after']:.4f}, "
              f"NLL {r['test']['nll_before']:.4f} -> {r['test']['nll_after']:.4f}; accuracy {r['test']['accuracy_without_t']:.3f}"
              f" -> {r['test']['accuracy_with_t']:.3f}, AUC {r['test']['auc_without_t']:.4f} -> {r['test']['auc_with_t']:.4f}")


if __name__ == "__main__":
    main()
