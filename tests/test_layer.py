"""MTA layer: identity at init, stage-2 switch, routing statistics and forward-time errors."""

import pytest
import torch
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense
from workers.toy_model import make_ffn

from mta_moe import MTAConfig, MTALayer

D = 16


def _t5_ffn() -> torch.nn.Module:
    cfg = T5Config(d_model=D, d_ff=40, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return T5DenseGatedActDense(cfg)


@pytest.mark.parametrize("kind", ["bottleneck", "ffn"])
@pytest.mark.parametrize("ffn_factory", [lambda: make_ffn(D, 32), _t5_ffn], ids=["mlp", "t5_gated"])
@pytest.mark.parametrize("k", [1, 2, None])
def test_identity_at_init(kind, ffn_factory, k):
    torch.manual_seed(0)
    ffn = ffn_factory().eval()
    layer = MTALayer(MTAConfig(expert_kind=kind, k=k, adapter_dim=8), D, ffn).eval()
    x = torch.randn(5, 7, D)
    out, _, _ = layer(x, torch.tensor([0, 1, 2, 1, 0]))
    assert (out - ffn(x)).abs().max().item() <= 1e-6


def _trained_layer(kind: str) -> tuple[MTALayer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layer = MTALayer(MTAConfig(expert_kind=kind, k=2, gate_mode="both", adapter_dim=8), D, make_ffn(D, 32))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, tasks = torch.randn(6, 5, D), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):
        opt.zero_grad()
        out, aux, _ = layer(x, tasks)
        (out.pow(2).mean() + aux).backward()
        opt.step()
    return layer.eval(), x, tasks


@pytest.mark.parametrize("kind", ["bottleneck", "ffn"])
def test_stage2_switch_keeps_output_then_trains_shared_parts(kind):
    layer, x, tasks = _trained_layer(kind)
    before, _, _ = layer(x, tasks)
    layer.enable_stage2()
    after, _, _ = layer(x, tasks)
    assert torch.equal(before, after)
    assert layer.stage == 2 and len(layer.shared_adapters) == 1
    mix = layer.last_routing.mix_weights
    assert mix.shape == (6, 2) and torch.allclose(mix.sum(-1), torch.ones(6))
    layer.train()
    out, _, _ = layer(x, tasks)
    out.pow(2).mean().backward()
    assert layer.shared_adapters[0].up.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layer.shared_adapters[0].up.weight.add_(0.1)
    changed, _, _ = layer.eval()(x, tasks)
    assert not torch.allclose(changed, before)


def test_reused_routing_reproduces_output_for_other_positions():
    layer, x, tasks = _trained_layer("bottleneck")
    layer.enable_stage2()
    with torch.no_grad():
        layer.shared_adapters[0].up.weight.normal_(0, 0.1)
    full, _, _ = layer(x, tasks)
    decision = layer.last_routing
    # the last position alone (as in a cached decoding step) with the prefix's routing
    last, _, _ = layer(x[:, -1:], routing=decision)
    assert torch.allclose(last, full[:, -1:], atol=1e-6)


def test_routing_statistics_accumulate_and_reset():
    layer = MTALayer(MTAConfig(num_experts=5, k=2, adapter_dim=8), D, make_ffn(D, 32))
    x = torch.randn(4, 3, D)
    layer(x, torch.tensor([0, 0, 1, 2]))
    layer(x, torch.tensor([0, 2, 2, 2]))
    stats = layer.get_routing_stats()
    assert stats.sequences.tolist() == [3, 1, 4, 0]
    assert stats.adapter_counts[0].tolist() == [3, 3, 0, 0, 0]  # task type 0 uses its adapters 0 and 1
    assert stats.adapter_counts[2, 4].item() == 4
    assert torch.allclose(stats.mean_gate_weights[:3].sum(-1), torch.ones(3, dtype=torch.float64))
    assert stats.mean_gate_weights[0, 0].item() == pytest.approx(0.5, abs=1e-6)
    layer.reset_routing_stats()
    assert layer.get_routing_stats().sequences.sum().item() == 0


def test_learned_gate_needs_no_task_ids():
    layer = MTALayer(MTAConfig(gate_mode="learned", selector_init_std=0.1), D, make_ffn(D, 32))
    out, _, _ = layer(torch.randn(2, 3, D))
    assert out.shape == (2, 3, D)
    assert layer.get_routing_stats().as_dict()["sequences"] == [0, 0, 0, 2]


def test_forward_errors_name_what_is_wrong():
    layer = MTALayer(MTAConfig(), D, make_ffn(D, 32))
    x = torch.randn(2, 3, D)
    with pytest.raises(ValueError, match=r"task_type_ids: ids must be in \[0, 2\] .* got 3"):
        layer(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"task_type_ids: ids must be in \[0, 2\] .* got -1"):
        layer(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="task_type_ids: required when mta.gate_mode is 'task'"):
        layer(x)
    with pytest.raises(ValueError, match=r"task_type_ids: need one id per sequence \(2\), got 3"):
        layer(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"expects \[batch, seq_len, hidden\]"):
        layer(x[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="mta.ep_size=5 needs an initialised process group"):
        MTALayer(MTAConfig(ep_size=5), D, make_ffn(D, 32))


def test_experts_are_deepspeed_expert_params_with_distinct_init():
    layer = MTALayer(MTAConfig(num_experts=4, adapter_dim=8, task_types=["a", "b"]), D, make_ffn(D, 32))
    experts = list(layer.local_experts)
    for p in layer.deepspeed_moe.experts.parameters():
        assert p.allreduce is False and p.group_name == "ep_size_1"
    for p in list(layer.selector.parameters()) + list(layer.base_ffn.parameters()):
        assert not hasattr(p, "allreduce")
    downs = [e.down.weight for e in experts]
    assert all(not torch.equal(downs[0], d) for d in downs[1:])
    # initial adapter weights depend only on (seed, layer, global id): the same in a new layer
    again = MTALayer(MTAConfig(num_experts=4, adapter_dim=8, task_types=["a", "b"]), D, make_ffn(D, 32))
    assert all(torch.equal(a.down.weight, b.down.weight) for a, b in zip(experts, again.local_experts))
    components = {c for c, _, _ in layer.named_component_parameters(prefix="mta")}
    assert components == {"adapters", "selector", "backbone"}
