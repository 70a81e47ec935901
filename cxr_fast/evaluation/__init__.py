"""Evaluation: metrics, calibration, the markdown report, plots, the model card, and the evaluation of runs
(runs.py: evaluate_run, evaluate, compare)."""
