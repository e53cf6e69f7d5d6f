"""Sequence-grouped dispatch equals DeepSpeed's stock dispatch: outputs and gradients."""

import pytest
import torch
from workers.toy_model import make_ffn

from mta_moe import MTAConfig, MTALayer
from mta_moe.modeling import batched_adapters, grouped_gemm
from mta_moe.modeling import dispatch as dispatch_module

D = 16


def _pair(kind: str, k, mode: str):
    layers = []
    for dispatch in ("grouped", "deepspeed"):
        torch.manual_seed(0)
        cfg = MTAConfig(num_experts=5, k=k, expert_kind=kind, adapter_dim=8, gate_mode=mode, selector_init_std=0.5, dispatch=dispatch)
        layer = MTALayer(cfg, D, make_ffn(D, 32))
        torch.manual_seed(1)
        with torch.no_grad():
            for p in layer.local_experts.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        layers.append(layer)
    return layers


def _counting(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


# ffn experts always take the loop; bottleneck adapters take gathered weights or grouped GEMMs, or the loop
FIXED_SHAPE = ("gathered_weights", "grouped_gemm")
FORMS = [
    (kind, form)
    for kind in ("bottleneck", "ffn")
    for form in (*FIXED_SHAPE, "loop_weight_in_bottleneck", "loop_weight_on_output")
    if kind == "bottleneck" or form not in FIXED_SHAPE
]


@pytest.mark.parametrize("kind,form", FORMS)
@pytest.mark.parametrize("k", [1, 2, None])
@pytest.mark.parametrize("mode", ["task", "both"])
def test_grouped_equals_deepspeed_dispatch(kind, form, k, mode, monkeypatch):
    """Every form of the grouped dispatch (gathered weights; grouped GEMMs; the per-adapter loop with the routing
    weight inside the bottleneck or on the output) equals DeepSpeed's stock dispatch."""
    monkeypatch.setattr(dispatch_module, "SCALED_FORWARD_MIN_ELEMENTS", 0 if form == "loop_weight_in_bottleneck" else 1 << 60)
    calls = {f: [] for f in FIXED_SHAPE}
    monkeypatch.setattr(grouped_gemm, "grouped_gemm_mixture", _counting(grouped_gemm.grouped_gemm_mixture, calls["grouped_gemm"]))
    monkeypatch.setattr(batched_adapters, "gathered_weight_mixture", _counting(batched_adapters.gathered_weight_mixture, calls["gathered_weights"]))
    grouped, stock = _pair(kind, k, mode)
    grouped.dispatch_form = form if form in FIXED_SHAPE else "loop"
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
    for fixed in FIXED_SHAPE:  # the form under test is the one that ran
        assert len(calls[fixed]) == (2 if form == fixed else 0)
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
    assert torch.autograd.gradcheck(mixture, (x,))
    expected = sum(torch.tanh(x @ mats[e]) * (indices == e).any(1).view(-1, 1, 1) for e in range(experts))
    assert torch.allclose(mixture(x), expected, atol=1e-12)


def _small_layer(k, bias: bool, stage: int, form: str | None, dtype=torch.bfloat16) -> MTALayer:
    torch.manual_seed(0)
    cfg = MTAConfig(
        num_experts=4, k=k, adapter_dim=16, gate_mode="both", selector_init_std=0.5, adapter_bias=bias, num_shared_adapters=1, shared_adapter_dim=16
    )
    layer = MTALayer(cfg, 32, make_ffn(32, 64))
    with torch.no_grad():
        for p in layer.local_experts.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    if stage == 2:
        layer.enable_stage2()
    layer.dispatch_form = form
    return layer.to(dtype)


def _forward_backward(step, layer: MTALayer, x: torch.Tensor, tasks: torch.Tensor):
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    out, aux, counts = step(xi, tasks)
    (out.float().pow(2).mean() + aux).backward()
    return out.detach(), counts, xi.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}


# grouped GEMMs compile in bfloat16 only (the kernel's shape rules); gathered weights in any dtype
COMPILED = [("grouped_gemm", torch.bfloat16), ("gathered_weights", torch.bfloat16), ("gathered_weights", torch.float32)]


@pytest.mark.parametrize("form,dtype", COMPILED)
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stage", [1, 2])
def test_layer_compiles_whole_at_ep1_and_matches_eager(form, dtype, k, bias, stage):
    """No host synchronisation at ep_size 1: forward + backward compile with fullgraph=True (a graph break
    raises), and the compiled layer computes what the eager layer does."""
    layer = _small_layer(k, bias, stage, form, dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    x = torch.randn(6, 5, 32, dtype=dtype)
    tasks = torch.tensor([0, 1, 0, 2, 1, 0])  # adapter 3 gets no sequence at k = 1
    eager = _forward_backward(layer, layer, x, tasks)
    torch._dynamo.reset()
    compiled = _forward_backward(torch.compile(layer, fullgraph=True, backend="aot_eager"), layer, x, tasks)
    assert torch.equal(eager[1], compiled[1])
    for a, b in [(eager[0], compiled[0]), (eager[2], compiled[2])]:
        assert (a.float() - b.float()).abs().max().item() <= tol
    assert eager[3].keys() == compiled[3].keys() and len(eager[3]) >= 4 * (2 if bias else 1)
    for name, grad in eager[3].items():
        assert (grad.float() - compiled[3][name].float()).abs().max().item() <= tol, name


def test_the_per_adapter_loop_does_not_compile_whole():
    """The compile test can fail: the loop form reads routing counts on the host, a graph break."""
    layer = _small_layer(2, True, 1, "loop")
    x = torch.randn(6, 5, 32, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="(?i)graph break|tolist|item|data-dependent|Unsupported"):
        _forward_backward(torch.compile(layer, fullgraph=True, backend="aot_eager"), layer, x, torch.tensor([0, 1, 0, 2, 1, 0]))


def test_grouped_gemm_kernel_probe_and_choice(monkeypatch):
    """Where ``torch._grouped_mm`` serves: probed eagerly per device and dtype; unaligned widths or ffn experts
    keep the loop."""
    from mta_moe.modeling import grouped_gemm

    assert grouped_gemm.kernel_supported(torch.device("cpu"), torch.float32)
    assert grouped_gemm.kernel_supported(torch.device("cpu"), torch.bfloat16)
    bottleneck = _pair("bottleneck", 2, "task")[0]
    assert grouped_gemm.usable(bottleneck.local_experts, torch.randn(2, 3, D))
    assert not grouped_gemm.usable(bottleneck.local_experts, torch.randn(2, 3, D, dtype=torch.float64))
    assert not grouped_gemm.usable(_pair("ffn", 2, "task")[0].local_experts, torch.randn(2, 3, D))
    odd = MTALayer(MTAConfig(num_experts=2, k=1, adapter_dim=6, gate_mode="task"), D, make_ffn(D, 32))
    assert not grouped_gemm.usable(odd.local_experts, torch.randn(2, 3, D))  # 6 fp32 = 24 bytes, not 16-aligned
    # CPU, eager: gathered tokens above CPU_EAGER_MAX_BYTES take the loop (2·3·16 fp32 · k 2 = 768 bytes)
    monkeypatch.setattr(grouped_gemm, "CPU_EAGER_MAX_BYTES", 767)
    assert grouped_gemm.usable(bottleneck.local_experts, torch.randn(2, 3, D), 1)
    assert not grouped_gemm.usable(bottleneck.local_experts, torch.randn(2, 3, D), 2)


def test_the_form_is_chosen_per_call_and_forced_forms_are_checked(monkeypatch):
    """Grouped GEMMs where usable; else gathered weights where 2·r <= L (weights no larger than the tokens a
    token-moving form gathers); else the loop, which also serves ffn experts and ep_size > 1."""
    from mta_moe.modeling.dispatch import choose_form

    bottleneck = _pair("bottleneck", 2, "task")[0].local_experts  # r = 8
    ffn = _pair("ffn", 2, "task")[0].local_experts
    assert choose_form(bottleneck, torch.randn(2, 16, D), 2) == "grouped_gemm"
    assert choose_form(bottleneck, torch.randn(2, 16, D, dtype=torch.float64), 2) == "loop"  # another dtype
    assert choose_form(ffn, torch.randn(2, 16, D), 2) == "loop"
    assert choose_form(bottleneck, torch.randn(2, 16, D), 2, ep_size=2) == "loop"
    assert choose_form(bottleneck, torch.randn(2, 1, D), 2, forced="gathered_weights") == "gathered_weights"
    # where grouped GEMMs are not usable (here: no kernel; also unaligned widths, float32 when compiling)
    monkeypatch.setitem(grouped_gemm._PROBED, ("cpu", torch.float32), False)
    assert choose_form(bottleneck, torch.randn(2, 16, D), 2) == "gathered_weights"
    assert choose_form(bottleneck, torch.randn(2, 15, D), 2) == "loop"  # 2·r > L: a decoding step, say
    # CPU, eager: gathered weights above CPU_EAGER_MAX_BYTES (2 · 2 sequences · k 2 · r 8 · 16 fp32 = 4096 bytes)
    # take the loop, as the grouped GEMMs' tokens do
    monkeypatch.setattr(grouped_gemm, "CPU_EAGER_MAX_BYTES", 4095)
    assert choose_form(bottleneck, torch.randn(2, 16, D), 1) == "gathered_weights"
    assert choose_form(bottleneck, torch.randn(2, 16, D), 2) == "loop"
    with pytest.raises(ValueError, match="needs bottleneck experts"):
        choose_form(ffn, torch.randn(2, 16, D), 2, forced="gathered_weights")
    with pytest.raises(ValueError, match="needs ep_size 1"):
        choose_form(bottleneck, torch.randn(2, 16, D), 2, ep_size=2, forced="grouped_gemm")
    with pytest.raises(ValueError, match="must be one of"):
        choose_form(bottleneck, torch.randn(2, 16, D), 2, forced="fast")


def test_mta_dispatch_names_a_form_for_every_call_and_is_checked(monkeypatch):
    from mta_moe.config import ConfigError

    calls = []
    monkeypatch.setattr(batched_adapters, "gathered_weight_mixture", _counting(batched_adapters.gathered_weight_mixture, calls))
    torch.manual_seed(0)
    layer = MTALayer(MTAConfig(num_experts=3, k=1, adapter_dim=8, gate_mode="task", dispatch="gathered_weights"), D, make_ffn(D, 32))
    layer(torch.randn(4, 1, D), torch.tensor([0, 1, 2, 0]))  # even a decoding step (L = 1)
    assert len(calls) == 1
    for bad in (dict(expert_kind="ffn"), dict(ep_size=2)):
        with pytest.raises(ConfigError, match="mta.dispatch: 'gathered_weights' runs bottleneck adapters at ep_size 1"):
            MTAConfig(num_experts=4, dispatch="gathered_weights", **bad)


def test_the_kernel_probe_answers_the_same_under_no_grad(monkeypatch):
    """The first use may be a generation step under no_grad; the probe's backward must still run."""
    monkeypatch.setattr(grouped_gemm, "_PROBED", {})
    with torch.no_grad():
        assert grouped_gemm.kernel_supported(torch.device("cpu"), torch.float32)


def test_the_kernel_probe_runs_inside_an_activation_checkpointed_block(monkeypatch):
    """The first forward of a checkpointed block probes the kernel: the probe must not run under its hooks."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr(grouped_gemm, "_PROBED", {})
    layer = _pair("bottleneck", 2, "task")[0]
    x = torch.randn(7, 9, D, requires_grad=True)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 0])
    out = checkpoint(lambda h: layer(h, tasks)[0], x, use_reentrant=False)
    out.pow(2).mean().backward()
    assert grouped_gemm._PROBED == {("cpu", torch.float32): True}
    reference = x.detach().clone().requires_grad_(True)
    layer(reference, tasks)[0].pow(2).mean().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)


def test_without_a_kernel_the_layer_says_so_and_takes_another_form(monkeypatch, caplog):
    monkeypatch.setattr(grouped_gemm, "_PROBED", {})
    monkeypatch.setattr(grouped_gemm, "CPU_KERNEL_DTYPES", (torch.bfloat16,))
    grouped, stock = _pair("bottleneck", 2, "task")
    x = torch.randn(7, 9, D)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 0])
    with caplog.at_level("INFO", logger="mta_moe"):
        out = grouped(x, tasks)[0]
    assert "grouped GEMMs unavailable on cpu in torch.float32 (no CPU kernel for torch.float32)" in caplog.text
    assert grouped_gemm._PROBED == {("cpu", torch.float32): False}
    assert (out - stock(x, tasks)[0]).abs().max().item() <= 1e-5
    assert grouped_gemm.missing_kernel(torch.device("cpu"), torch.float64) == "no CPU kernel for torch.float64"
    assert grouped_gemm.missing_kernel(torch.device("meta"), torch.bfloat16) == "no kernel on meta"


def test_a_kernel_that_fails_where_one_is_expected_stops_with_the_way_around(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel image missing\nmore")

    monkeypatch.setattr(grouped_gemm, "_PROBED", {})
    monkeypatch.setattr(torch, "_grouped_mm", broken)
    with pytest.raises(
        RuntimeError,
        match=r"torch._grouped_mm failed on cpu in torch.float32 \(kernel image missing\); "
        r"set mta.dispatch to 'gathered_weights' or 'loop'",
    ):
        grouped_gemm.kernel_supported(torch.device("cpu"), torch.float32)
