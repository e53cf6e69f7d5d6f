"""PCGrad: projection arithmetic, the combined gradient of real task losses, and refusals by name."""

import pytest
import torch

from mta_moe.config import ConfigError
from mta_moe.training.gradient_projection import pcgrad_gradient, project_conflicts
from mta_moe.training.train_checks import check_projection


def test_conflicting_gradients_are_projected_to_non_negative_dot_products():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a, b = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
        if a @ b >= 0:
            b = b - 2 * (a @ b) / (a @ a) * a  # make them conflict
        projected, conflicts = project_conflicts([a, b], g)
        assert conflicts == 2
        pa, pb = projected
        assert float(pa @ pb) >= -1e-12
        assert float(pa @ b) == pytest.approx(0.0, abs=1e-10) and float(pb @ a) == pytest.approx(0.0, abs=1e-10)
        # the update does not increase either task's loss to first order
        assert float((pa + pb) @ a) >= -1e-12 and float((pa + pb) @ b) >= -1e-12


def test_agreeing_gradients_are_left_alone():
    a = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64)
    projected, conflicts = project_conflicts([a, b], torch.Generator().manual_seed(0))
    assert conflicts == 0 and torch.equal(projected, torch.stack([a, b]))


def test_hand_computed_projection():
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    projected, _ = project_conflicts([a, b], torch.Generator().manual_seed(0))
    # a - (a·b / |b|²) b = [1, 0] + ½[-1, 1];  b - (b·a / |a|²) a = [-1, 1] + [1, 0]
    assert projected.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_pcgrad_gradient_of_real_losses_and_unreached_parameters():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    unused = torch.nn.Parameter(torch.zeros(3))
    losses = [w[0] - 0.0 * w[1], -w[0] + w[1]]  # gradients [1, 0] and [-1, 1]
    grads, stats = pcgrad_gradient(losses, [w, unused], torch.Generator().manual_seed(0))
    assert grads[0].tolist() == [0.5, 1.5] and grads[1] is None  # [0.5, 0.5] + [0, 1]
    assert stats["conflicts"] == 1.0  # both ordered pairs conflict


@pytest.mark.parametrize(
    "ds,ep,message",
    [
        ({"fp16": {"enabled": True}}, 1, r"gradient_projection: per-task gradients are taken outside DeepSpeed's fp16"),
        ({}, 2, r"gradient_projection: with mta.ep_size 2 each rank holds only some adapters"),
    ],
)
def test_refused_where_the_projection_cannot_be_exact(ds, ep, message):
    with pytest.raises(ConfigError, match=message):
        check_projection("pcgrad", ds, ep)
    check_projection(None, ds, ep)  # off: nothing to refuse
    with pytest.raises(ConfigError, match=r"must be null or one of \['pcgrad'\]"):
        check_projection("mgda", {}, 1)
