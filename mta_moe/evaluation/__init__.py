"""Evaluation: generation over a dataset, per-task metrics by task kind, calibration, per-task routing,
and the multi-task report."""
