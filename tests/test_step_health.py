"""The first non-finite step, folded on the device and named alike on every rank."""

import math

import torch
from distributed import run_workers

from mta_moe.training.step_health import StepHealth


def test_the_first_non_finite_step_is_remembered_with_its_values():
    health = StepHealth("cpu")
    assert health.first_bad(1) is None
    health.observe(1, torch.tensor(2.0), torch.tensor(1.0), ["a"])
    health.observe(2, torch.tensor(1.5), torch.tensor(float("nan")), ["b"])  # a finite loss, a NaN gradient norm
    health.observe(3, torch.tensor(float("inf")), None, ["c"])
    step, loss, norm, tasks = health.first_bad(1)
    assert (step, loss, tasks) == (2, 1.5, ["b"]) and math.isnan(norm)
    assert health.first_bad(1, grad_norm_known=False)[2] is None


def test_every_rank_names_the_same_step_with_the_values_of_the_rank_that_saw_it(tmp_path):
    """Rank 1 sees a non-finite loss at step 3, rank 0 only at step 5: both report step 3 with rank 1's values
    (before, rank 0 reported NaN for them)."""
    results = run_workers("step_health_worker.py", [], 2, tmp_path, timeout=120)
    for result in results:
        assert result == {"step": 3, "loss": "inf", "norm": 3.5, "tasks": ["task3"]}
