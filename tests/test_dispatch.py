"""Sequence-grouped dispatch equals DeepSpeed's stock dispatch: outputs and gradients."""
import pytest
import torch

from mta_moe import MTAConfig, MTALayer
from workers.toy_model import make_ffn

D = 16


def _pair(kind: str, k, mode: str):
    layers = []
    for dispatch in ("grouped", "deepspeed"):
        torch.manual_seed(0)
        cfg = MTAConfig(num_experts=5, k=k, expert_kind=kind, adapter_dim=8, gate_mode=mode, selector_init_std=0.5,
                        dispatch=dispatch)
        layer = MTALayer(cfg, D, make_ffn(D, 32))
        torch.manual_seed(1)
        with torch.no_grad():
            for p in layer.local_experts.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        layers.append(layer)
    return layers


@pytest.mark.parametrize("kind", ["bottleneck", "ffn"])
@pytest.mark.parametrize("k", [1, 2, None])
@pytest.mark.parametrize("mode", ["task", "both"])
def test_grouped_equals_deepspeed_dispatch(kind, k, mode):
    grouped, stock = _pair(kind, k, mode)
    x = torch.randn(7, 9, D)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 0])  # adapter 4 (task type 2) gets no sequence
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = []
    for layer, xi in zip((grouped, stock), xs):
        out, aux, counts = layer(xi, tasks)
        (out.pow(2).mean() + aux).backward()
        outs.append((out, counts))
    assert (outs[0][0] - outs[1][0]).abs().max().item() <= 1e-5
    assert torch.equal(outs[0][1], outs[1][1].to(outs[0][1].dtype))  # tokens per expert
    assert (xs[0].grad - xs[1].grad).abs().max().item() <= 1e-5
    for (n, a), (_, b) in zip(grouped.named_parameters(), stock.named_parameters()):
        ga = torch.zeros_like(a) if a.grad is None else a.grad
        gb = torch.zeros_like(b) if b.grad is None else b.grad
        assert (ga - gb).abs().max().item() <= 1e-5, n
