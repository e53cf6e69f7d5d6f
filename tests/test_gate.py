"""Task Weight Selector: per-sequence routing, Softmax-T initialisation, top-k renormalisation."""

import pytest
import torch
from workers.toy_model import make_ffn

from mta_moe import ConfigError, MTAConfig, MTALayer
from mta_moe.modeling import sequence_representation

D = 16


def _layer(**cfg) -> MTALayer:
    torch.manual_seed(0)
    layer = MTALayer(MTAConfig(adapter_dim=8, **cfg), D, make_ffn(D, 32)).eval()
    with torch.no_grad():  # give the adapters non-zero outputs so routing shows in the output
        for p in layer.local_experts.parameters():
            p.normal_(0, 0.3)
    return layer


def _reference(layer: MTALayer, x: torch.Tensor, routing) -> torch.Tensor:
    """Sequence by sequence: FFN(x_b) + Σ_j w_bj · A_{i_bj}(x_b), with one routing row per sequence."""
    rows = []
    for b in range(x.size(0)):
        y = layer.base_ffn(x[b])
        for e, w in zip(routing.indices[b].tolist(), routing.weights[b]):
            y = y + w * layer.local_experts[e](x[b])
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["task", "learned", "both"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_every_token_of_a_sequence_gets_the_same_adapters_and_weights(mode, k):
    layer = _layer(num_experts=5, k=k, gate_mode=mode, selector_init_std=1.0)
    x = torch.randn(6, 9, D)
    tasks = torch.tensor([0, 1, 2, 2, 1, 0])
    routing = layer.route(x, tasks)
    # what the gate hands DeepSpeed's dispatch: per-token routes [k, tokens]
    _, capacity, _, idx, loc, gates, counts = layer.selector(x.reshape(-1, D), routing)
    idx, gates = idx.view(k, 6, 9), gates.view(k, 6, 9)
    assert torch.equal(idx, routing.indices.t().unsqueeze(-1).expand(k, 6, 9).to(idx.dtype))
    assert torch.equal(gates, routing.weights.t().unsqueeze(-1).expand(k, 6, 9))
    assert int(capacity) == int(counts.max()) and int(counts.sum()) == 6 * 9 * k  # nothing dropped
    out, _, _ = layer(x, tasks)
    assert torch.allclose(out, _reference(layer, x, routing), atol=1e-5)


def test_softmax_t_init_gives_official_probabilities():
    layer = _layer()  # defaults: 5 adapters, 3 task types, T = 0.1, β 0.22 vs 0.20, W = 0
    x = torch.randn(3, 4, D)
    routing = layer.route(x, torch.tensor([0, 1, 2]))
    beta = layer.selector.task_bias.detach()
    assert torch.allclose(routing.probs, torch.softmax(beta / 0.1, dim=-1), atol=1e-7)
    expected_first = torch.tensor([0.2244, 0.2244, 0.1837, 0.1837, 0.1837])
    assert torch.allclose(routing.probs[0], expected_first, atol=5e-5)
    assert routing.probs[1].argmax() in (2, 3) and routing.probs[2].argmax() == 4
    # 'both' with W = 0 routes exactly like the task bias alone; 'learned' with W = 0 is uniform
    both = _layer(gate_mode="both")
    with torch.no_grad():
        both.selector.wg.weight.zero_()
    assert torch.allclose(both.route(x, torch.tensor([0, 1, 2])).probs, routing.probs)
    learned = MTALayer(MTAConfig(gate_mode="learned"), D, make_ffn(D, 32))
    assert torch.allclose(learned.route(x, None).probs, torch.full((3, 5), 0.2))


def test_topk_weights_renormalise_and_only_selected_adapters_get_gradient():
    layer = _layer(num_experts=5, k=2).train()
    x = torch.randn(4, 6, D)
    tasks = torch.zeros(4, dtype=torch.long)  # task type 0 favours adapters 0 and 1
    routing = layer.route(x, tasks)
    assert torch.allclose(routing.weights.sum(-1), torch.ones(4))
    assert routing.indices.sort(-1).values.tolist() == [[0, 1]] * 4
    out, _, _ = layer(x, tasks)
    out.pow(2).sum().backward()
    for e, expert in enumerate(layer.local_experts):
        grads = [p.grad for p in expert.parameters()]
        has_grad = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert has_grad == (e in (0, 1)), f"adapter {e}"
    beta_grad = layer.selector.task_bias.grad
    assert beta_grad[0, :2].abs().sum() > 0 and torch.all(beta_grad[0, 2:] == 0) and torch.all(beta_grad[1:] == 0)


def test_unused_gate_terms_are_frozen_by_mode():
    assert not _layer(gate_mode="task").selector.wg.weight.requires_grad
    assert not _layer(gate_mode="learned").selector.task_bias.requires_grad
    both = _layer(gate_mode="both").selector
    assert both.wg.weight.requires_grad and both.task_bias.requires_grad


def test_aux_losses_match_their_formulas():
    x = torch.randn(8, 5, D)
    tasks = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert _layer().route(x, tasks).aux_loss.item() == 0.0
    layer = _layer(num_experts=4, k=2, gate_mode="both", selector_init_std=0.5, task_types=["a", "b", "c"], load_balance_coef=0.1, z_loss_coef=0.01)
    r = layer.route(x, tasks)
    logits = (x[:, 0] @ layer.selector.wg.weight.t() + layer.selector.task_bias[tasks]) / 0.1
    probs = torch.softmax(logits, -1)
    share = torch.zeros(8, 4).scatter(1, r.indices, 1.0).mean(0) / 2
    expected = 0.1 * 4 * (share * probs.mean(0)).sum() + 0.01 * torch.logsumexp(logits, -1).pow(2).mean()
    assert torch.allclose(r.aux_loss, expected, rtol=1e-5)
    out, l_aux, _ = layer(x, tasks)
    assert torch.allclose(l_aux, expected, rtol=1e-5)


def test_sequence_representation_respects_padding():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])  # right- and left-padded
    first = sequence_representation(h, mask, "first")
    assert torch.equal(first[0], h[0, 0]) and torch.equal(first[1], h[1, 2])
    mean = sequence_representation(h, mask, "mean")
    assert torch.allclose(mean[0], h[0, :3].mean(0)) and torch.allclose(mean[1], h[1, 2:].mean(0))
    assert torch.equal(sequence_representation(h, None, "first"), h[:, 0])


def test_official_preset_reproduces_the_official_formula():
    """``ffn`` experts, the official overlapping Softmax-T rows, dense mixture: y = Σ_e softmax(β[type] / 0.1)_e ·
    FFN_e(x), written out independently of the layer (the official code's mixture of FFN copies)."""
    torch.manual_seed(0)
    ffn = make_ffn(D, 32)
    layer = MTALayer(MTAConfig(expert_kind="ffn", task_adapter_assignment="official"), D, ffn).eval()
    with torch.no_grad():
        for expert in layer.local_experts:  # the copies drift apart in training; make them differ
            for p in expert.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    rows = torch.tensor(
        [
            [0.22, 0.22, 0.20, 0.20, 0.20],  # classify: adapters 0, 1
            [0.20, 0.22, 0.22, 0.20, 0.20],  # nli: 1, 2
            [0.20, 0.20, 0.20, 0.22, 0.22],
        ]
    )  # generate: 3, 4
    assert torch.allclose(layer.selector.task_bias.detach(), rows)
    x, types = torch.randn(3, 4, D), torch.tensor([0, 1, 2])
    with torch.no_grad():
        out, _, _ = layer(x, types)
        weights = torch.softmax(rows[types] / 0.1, dim=-1)
        expected = sum(weights[:, e, None, None] * expert(x) for e, expert in enumerate(layer.local_experts))
    assert (out - expected).abs().max().item() <= 2e-6
    with pytest.raises(ConfigError, match=r"^mta.task_adapter_assignment: 'official' is the official code's table"):
        MTAConfig(num_experts=6, task_adapter_assignment="official")
