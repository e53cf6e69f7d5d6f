"""Loss reductions and static task weights against hand-computed values."""

import pytest
import torch

from mta_moe.config import ConfigError
from mta_moe.training.losses import reduce_loss, task_weight_vector

# three sequences: task 0 with 2 target tokens, task 1 with 4, task 0 with 1
TOKENS = torch.tensor([[1.0, 3.0, 9.0, 9.0], [2.0, 2.0, 4.0, 8.0], [6.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
TASKS = torch.tensor([0, 1, 0])


def test_token_reduction_is_the_mean_over_target_tokens():
    loss, per_sequence = reduce_loss(TOKENS, MASK, TASKS, "token")
    assert loss.item() == pytest.approx((1 + 3 + 2 + 2 + 4 + 8 + 6) / 7)
    assert per_sequence.tolist() == pytest.approx([2.0, 4.0, 6.0])


def test_a_given_normalizer_divides_the_token_sum_and_leaves_other_reductions_alone():
    assert reduce_loss(TOKENS, MASK, TASKS, "token", normalizer=10.0)[0].item() == pytest.approx((1 + 3 + 2 + 2 + 4 + 8 + 6) / 10)
    assert (
        reduce_loss(TOKENS, MASK, TASKS, "token", normalizer=7.0)[0].item() == reduce_loss(TOKENS, MASK, TASKS, "token")[0].item()
    )  # the batch's own count: the plain token mean
    assert reduce_loss(TOKENS, MASK, TASKS, "sequence", normalizer=10.0)[0].item() == pytest.approx((2 + 4 + 6) / 3)


def test_sequence_reduction_weighs_every_sequence_alike():
    loss, _ = reduce_loss(TOKENS, MASK, TASKS, "sequence")
    assert loss.item() == pytest.approx((2 + 4 + 6) / 3)


def test_task_reduction_weighs_every_present_task_alike():
    loss, _ = reduce_loss(TOKENS, MASK, TASKS, "task")
    assert loss.item() == pytest.approx(((2 + 6) / 2 + 4) / 2)


def test_task_weights_scale_each_task_share():
    weights = torch.tensor([0.5, 2.0])
    assert reduce_loss(TOKENS, MASK, TASKS, "token", weights)[0].item() == pytest.approx((0.5 * 4 + 2 * 16 + 0.5 * 6) / 7)
    assert reduce_loss(TOKENS, MASK, TASKS, "sequence", weights)[0].item() == pytest.approx((0.5 * 2 + 2 * 4 + 0.5 * 6) / 3)
    assert reduce_loss(TOKENS, MASK, TASKS, "task", weights)[0].item() == pytest.approx((0.5 * 4 + 2 * 4) / 2)


def test_task_reduction_gradient_ignores_target_length():
    logits = torch.zeros(3, 4, requires_grad=True)
    tokens = (logits - 1.0) ** 2
    loss, _ = reduce_loss(tokens, MASK, TASKS, "task")
    loss.backward()
    # task 1 (one sequence, four tokens) gets half the loss: each of its tokens 1/2 * 1/4 of the gradient
    assert logits.grad[1].tolist() == pytest.approx([2 * -1 * 0.5 / 4] * 4)
    # task 0: two sequences share the other half; sequence 2's single token carries 1/2 * 1/2
    assert logits.grad[2, 0].item() == pytest.approx(2 * -1 * 0.25)


def test_weight_vector_follows_task_order_and_rejects_unknown_names():
    assert task_weight_vector({"b": 3.0}, ["a", "b"]).tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"mta.train.task_weights.zzz: unknown task"):
        task_weight_vector({"zzz": 1.0}, ["a", "b"])


def test_unknown_reduction_is_named():
    with pytest.raises(ConfigError, match="mta.train.loss_reduction"):
        reduce_loss(TOKENS, MASK, TASKS, "median")


@pytest.mark.parametrize("name, mode", [("t5", "seq2seq"), ("bart", "seq2seq"), ("gpt2", "causal")])
def test_objective_computes_the_loss_once_and_equal_to_the_backbones(name, mode):
    """The backbone is not given labels (no second cross-entropy); the loss equals what it would have computed."""
    from types import SimpleNamespace

    from backbones import make_backbone, make_inputs

    from mta_moe import MTAConfig, MTAModel
    from mta_moe.training.objective import Objective
    from mta_moe.training.task_balance import TaskBalance

    model = MTAModel(make_backbone(name), MTAConfig(num_experts=2, adapter_dim=4)).eval()
    inputs = make_inputs(name)
    batch = {**inputs, "task_type_ids": torch.tensor([0, 1, 2, 0]), "task_ids": torch.tensor([0, 1, 1, 0])}
    seen = []
    forward = model.base_model.forward
    model.base_model.forward = lambda *a, **kw: seen.append(sorted(kw)) or forward(*a, **kw)
    cfg = SimpleNamespace(loss_reduction="token", gradient_projection=None, seed=0)
    objective = Objective(cfg, TaskBalance(None, ["a", "b"], torch.ones(2)), mode, world=1)
    result = objective(model, model, batch, step=0)
    assert len(seen) == 1 and "labels" not in seen[0]
    with torch.no_grad():
        reference = model(**inputs, task_type_ids=batch["task_type_ids"]).loss  # the backbone's own cross-entropy
    assert abs(result.loss.item() - reference.item()) <= 1e-5 * reference.item()
