"""Sequence-grouped dispatch equals DeepSpeed's stock dispatch: outputs and gradients."""
import pytest
import torch

from mta_moe import MTAConfig, MTALayer
from mta_moe.modeling import dispatch as dispatch_module
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
@pytest.mark.parametrize("folded", [True, False], ids=["weight_in_bottleneck", "weight_on_output"])
def test_grouped_equals_deepspeed_dispatch(kind, k, mode, folded, monkeypatch):
    monkeypatch.setattr(dispatch_module, "SCALED_FORWARD_MIN_ELEMENTS", 0 if folded else 1 << 60)
    grouped, stock = _pair(kind, k, mode)
    x = torch.randn(7, 9, D)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 0])  # adapter 4 (task type 2) gets no sequence
    with torch.no_grad():  # inference skips adapters without sequences; the result is the same sum
        inference = grouped(x, tasks)[0]
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = []
    for layer, xi in zip((grouped, stock), xs):
        out, aux, counts = layer(xi, tasks)
        (out.pow(2).mean() + aux).backward()
        outs.append((out, counts))
    assert (outs[0][0] - outs[1][0]).abs().max().item() <= 1e-5
    assert torch.equal(inference, outs[0][0].detach())
    assert torch.equal(outs[0][1], outs[1][1].to(outs[0][1].dtype))  # tokens per expert
    assert (xs[0].grad - xs[1].grad).abs().max().item() <= 1e-5
    for (n, a), (_, b) in zip(grouped.named_parameters(), stock.named_parameters()):
        ga = torch.zeros_like(a) if a.grad is None else a.grad
        gb = torch.zeros_like(b) if b.grad is None else b.grad
        assert (ga - gb).abs().max().item() <= 1e-5, n


def test_scaled_forward_equals_scale_times_forward():
    from mta_moe.modeling.adapters import BottleneckAdapter
    torch.manual_seed(0)
    adapter = BottleneckAdapter(D, 8, "gelu").double()
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    x = torch.randn(5, 3, D, dtype=torch.float64)
    scale = torch.rand(5, 1, 1, dtype=torch.float64, requires_grad=True)
    scaled = adapter.scaled_forward(x, scale)
    reference = scale * adapter(x)
    assert torch.allclose(scaled, reference, atol=1e-12)
    g = torch.randn_like(reference)
    grads = torch.autograd.grad(scaled, [scale, *adapter.parameters()], g)
    ref_grads = torch.autograd.grad(reference, [scale, *adapter.parameters()], g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2])
def test_gather_and_combine_have_exact_gradients(k):
    """gradcheck of the custom autograd nodes: routes grouped by adapter, one adapter left without sequences."""
    from mta_moe.modeling.dispatch import SequenceCombine, SequenceGather
    batch, experts = 6, 4
    indices = torch.tensor([[0, 2], [2, 0], [1, 0], [0, 1], [2, 1], [1, 2]])[:, :k]
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sequences = torch.arange(batch).repeat_interleave(k)[order]
    counts = torch.bincount(flat, minlength=experts).tolist()
    assert counts[3] == 0
    mats = [torch.randn(3, 3, dtype=torch.float64) for _ in range(experts)]

    def mixture(x):
        blocks = SequenceGather.apply(x, sequences, counts)
        outs = [torch.tanh(b @ m) for b, m in zip(blocks, mats)]
        return SequenceCombine.apply(sequences, counts, batch, *outs)

    x = torch.randn(batch, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixture, (x, ))
    expected = sum(torch.tanh(x @ mats[e]) * (indices == e).any(1).view(-1, 1, 1) for e in range(experts))
    assert torch.allclose(mixture(x), expected, atol=1e-12)
