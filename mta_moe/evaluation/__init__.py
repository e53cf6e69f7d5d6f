"""Evaluation: generation over a dataset, scoring of exports (the metrics are ``mta_moe.metrics``), calibration,
per-task routing, and the multi-task report."""
