"""Dynamic task weights: uncertainty, validation-driven and GradNorm, on toy problems with known answers."""

import math

import pytest
import torch

from mta_moe.config import ConfigError
from mta_moe.training.losses import reduce_loss
from mta_moe.training.run_config import TrainConfig
from mta_moe.training.task_balance import TaskBalance

NAMES = ["noisy", "clean"]


def _two_regressions(n: int = 256, seed: int = 0):
    """Two tasks share y = 2x; task 0's targets carry noise of std 1, task 1's of std 0.1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, generator=g)
    task = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    noise = torch.randn(2 * n, generator=g) * torch.where(task == 0, 1.0, 0.1)
    return x, 2 * x + noise, task


def test_uncertainty_weights_down_weight_the_noisy_task_towards_one_over_its_loss():
    x, y, task = _two_regressions()
    balance = TaskBalance({"method": "uncertainty"}, NAMES, torch.ones(2))
    w = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, balance.log_vars], lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        per_token = (w * x - y).pow(2).unsqueeze(1)  # [B, 1]
        loss, _ = reduce_loss(per_token, torch.ones_like(per_token), task, "task", balance.weights())
        (loss + balance.regulariser(task)).backward()
        optimizer.step()
    weights = balance.current()
    assert weights["noisy"] < 0.1 * weights["clean"]  # started equal at 1.0
    # at the optimum exp(-s_t) = 1 / L_t: the task's own mean squared error (its noise variance)
    mse = [float((w.detach() * x - y)[task == t].pow(2).mean()) for t in (0, 1)]
    assert weights["noisy"] == pytest.approx(1 / mse[0], rel=0.1)
    assert weights["clean"] == pytest.approx(1 / mse[1], rel=0.1)
    assert float(w.detach()) == pytest.approx(2.0, abs=0.02)  # the clean task dominates the shared weight


def test_validation_weights_follow_the_gap_below_baseline_or_best():
    balance = TaskBalance({"method": "validation", "rate": 10.0, "max_weight": 3.0}, ["a", "b", "c"], torch.ones(3))
    balance.after_validation({"a": 0.8, "b": 0.5, "c": 0.9, "macro": 0.7}, {"b": 0.6})
    raw = [1.0, 1 + 10 * 0.1, 1.0]  # a, c at their best; b 0.1 below its baseline
    assert balance.dynamic.tolist() == pytest.approx([r / (sum(raw) / 3) for r in raw])
    balance.after_validation({"a": 0.6, "b": 0.2, "c": 0.9}, {"b": 0.6})  # a falls 0.2 below its best
    raw = [3.0, 3.0, 1.0]  # 1 + 10·0.2 = 3 and 1 + 10·0.4 capped at 3
    assert balance.dynamic.tolist() == pytest.approx([r / (7 / 3) for r in raw])
    assert balance.best == {"a": 0.8, "b": 0.5, "c": 0.9}


def test_gradnorm_equalises_weighted_gradient_norms_and_favours_the_slower_task():
    w = torch.ones(3, requires_grad=True)
    x = torch.tensor([1.0, 0.0, 0.0])
    balance = TaskBalance({"method": "gradnorm", "alpha": 1.5, "lr": 0.005}, NAMES, torch.ones(2))
    everywhere = torch.tensor([True, True])
    # task 0's gradient w.r.t. w is 4× task 1's, both at their initial loss: weights move to 0.4 / 1.6
    for _ in range(500):
        losses = torch.stack([4 * (w * x).sum(), (w * x).sum()])
        balance.gradnorm_step(losses, everywhere, everywhere, [w], world=1)
    assert balance.dynamic.tolist() == pytest.approx([0.4, 1.6], abs=0.05)
    # equal gradient norms; task 1's loss has fallen to half its first value, task 0's not at all:
    # task 0 is the slower learner and gets the larger weight, about r_0^1.5 : r_1^1.5 = 2^1.5 (a little
    # less: the two targets add up to more than the weights' budget of 2, so the equilibrium falls short)
    balance = TaskBalance({"method": "gradnorm", "alpha": 1.5, "lr": 0.005}, NAMES, torch.ones(2))
    balance.initial_loss = {"noisy": 1.0, "clean": 2.0}
    for _ in range(500):
        losses = torch.stack([(w * x).sum(), (w * x).sum()])  # both 1.0, gradient norm 1
        balance.gradnorm_step(losses, everywhere, everywhere, [w], world=1)
    ratio = balance.dynamic[0] / balance.dynamic[1]
    assert float(ratio) == pytest.approx(2**1.5, rel=0.1)


def test_gradnorm_ignores_tasks_absent_from_the_batch():
    w = torch.ones(2, requires_grad=True)
    balance = TaskBalance({"method": "gradnorm"}, ["a", "b", "c"], torch.ones(3))
    present = torch.tensor([True, True, False])
    losses = torch.stack([3 * w.sum(), w.sum(), 5 * w.sum()])
    balance.gradnorm_step(losses, present, present, [w], world=1)
    assert set(balance.initial_loss) == {"a", "b"}
    assert balance.dynamic[0] < 1 < balance.dynamic[1] and math.isclose(float(balance.dynamic.mean()), 1.0)


def test_static_weights_multiply_the_dynamic_ones_and_state_round_trips():
    balance = TaskBalance({"method": "validation"}, ["a", "b"], torch.tensor([2.0, 1.0]))
    balance.after_validation({"a": 0.5, "b": 0.9}, {"a": 0.6})
    assert balance.weights().tolist() == pytest.approx([2 * 2 / 1.5, 1 / 1.5])
    clone = TaskBalance({"method": "validation"}, ["a", "b"], torch.tensor([2.0, 1.0]))
    clone.load_state_dict(balance.state_dict())
    assert torch.equal(clone.weights(), balance.weights()) and clone.best == balance.best


@pytest.mark.parametrize(
    "value,reduction,message",
    [
        ({"method": "softmax"}, "token", r"mta.train.weighting.method: must be one of \['uncertainty', 'validation'"),
        ({"rate": 2}, "token", r"mta.train.weighting.method: required"),
        ({"method": "uncertainty"}, "token", r"set mta.train.loss_reduction to 'task'"),
        ({"method": "gradnorm", "rate": 1}, "token", r"mta.train.weighting.rate: not an option of 'gradnorm'"),
        ({"method": "validation", "rate": -1}, "token", r"mta.train.weighting.rate: must be a number > 0"),
        ({"method": "validation", "max_weight": 0.5}, "token", r"mta.train.weighting.max_weight: must be a number >= 1"),
    ],
)
def test_bad_weighting_names_the_key(value, reduction, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(weighting=value, loss_reduction=reduction)
