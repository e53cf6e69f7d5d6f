"""Forward+backward time and peak memory of one MTA layer's adapter mixture under eight computations.

(a) grouped: the MTA layer as shipped (routing + grouped dispatch in the form it chooses: grouped GEMMs where
    the kernel serves the device and dtype, else per-sequence gathered weights where 2·r <= L, else the
    per-adapter loop; ``form`` in each row says which);
(a2) grouped_loop: the same layer told to keep the per-adapter loop (the form before grouped GEMMs);
(a3) gathered_weights: the same layer told to gather its adapters' weights per sequence (two batched matmuls);
(b) deepspeed: DeepSpeed 0.19.8's stock MOELayer (token-level gate output, index dispatch padded to
    E × capacity, drop_tokens=False) with the same adapter experts and the same routing decisions;
(c) dense: the official-style dense mixture, every adapter on every token, weighted by softmax(logits/T);
(d) floor: only the selected adapters' matmuls on pre-grouped sequences, no routing work;
(e) ffn: one plain d -> 4d -> d FFN (GELU) on the same tokens;
(f) anchor: the bare adapter math as two ``torch._grouped_mm`` calls on tokens sorted by adapter in
    advance, offsets on the device, with autograd (no routing, gather or combine): what the GPU can do.
Routing: ``--routing learned`` spreads sequences over all adapters (a random learned gate); ``--routing
task`` is the task-biased gate MTA trains with (three task types, Softmax-T init), which sends each
batch to few adapters, so DeepSpeed's capacity (the largest load) pads the idle ones.
Per shape the variants run interleaved and medians are reported, with the ratios taken inside the run.
Usage: python benchmarks/layer_dispatch.py [--hidden 512 768] [--experts 4 8 16] [--k 1 2]
       [--tokens 2048 8192 32768] [--routing learned|task] [--device cpu|cuda] [--dtype fp32|bf16]
       [--out F.json] [--plot F.png]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from measure import environment, interleaved_medians, peak_memory_mb, write_json
from torch import nn

from mta_moe import MTAConfig, MTALayer
from mta_moe.modeling import grouped_gemm
from mta_moe.modeling.dispatch import choose_form

VARIANTS = ("a_grouped", "a2_grouped_loop", "a3_gathered_weights", "b_deepspeed", "c_dense", "d_floor", "f_anchor")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TASK_TYPES = ("classify", "nli", "generate")


def _layer(hidden: int, experts: int, k: int | None, dispatch: str, args, form: str | None = None) -> MTALayer:
    """An MTA layer with random (non-zero) adapters; equal seeds give equal layers.

    ``--routing learned``: a random learned gate (sequences spread over all adapters);
    ``--routing task``: the task-biased Softmax-T gate over three task types, as MTA trains.
    """
    torch.manual_seed(0)
    if args.routing == "task":
        gate = dict(gate_mode="task", task_types=list(TASK_TYPES))
    else:
        # logits of order 1 (std d^-1/2 on unit-scale inputs), as a trained gate has: a larger std drives many
        # routing weights below 1e-38, whose subnormal arithmetic would time the CPU's slow path instead
        gate = dict(gate_mode="learned", selector_init_std=hidden**-0.5, task_types=["t"])
    cfg = MTAConfig(
        num_experts=experts, k=k, adapter_dim=args.adapter_dim, dispatch=dispatch, track_routing=False, **gate
    )
    layer = MTALayer(cfg, hidden, nn.Identity()).to(args.device, DTYPES[args.dtype])
    with torch.no_grad():
        for p in layer.local_experts.parameters():
            p.normal_(0, 0.02)
    layer.dispatch_form = form
    return layer


def _layer_step(layer: MTALayer, x: torch.Tensor, tasks: torch.Tensor | None, grad: torch.Tensor):
    def run():
        xi = x.detach().requires_grad_(True)
        layer._dispatch(xi, layer.route(xi, tasks)).backward(grad)

    return run


def _dense_step(layer: MTALayer, x: torch.Tensor, tasks: torch.Tensor | None, grad: torch.Tensor):
    """Official ALTER style: a loop over all experts, each on every token, summed with the softmax weights."""

    def run():
        xi = x.detach().requires_grad_(True)
        weights = layer.route(xi, tasks).dense_weights()
        out = sum(weights[:, e].view(-1, 1, 1) * expert(xi) for e, expert in enumerate(layer.local_experts))
        out.backward(grad)

    return run


def _floor_step(layer: MTALayer, x: torch.Tensor, counts: list[int]):
    """The selected adapters' matmuls on blocks grouped in advance (the same sequence counts as the routing gives)."""
    blocks = [torch.randn(c, *x.shape[1:], device=x.device, dtype=x.dtype) for c in counts]
    grads = [torch.randn_like(b) for b in blocks]

    def run():
        outs = [expert(b.detach().requires_grad_(True)) for expert, b in zip(layer.local_experts, blocks)]
        torch.autograd.backward(outs, grads)

    return run


def _anchor_step(layer: MTALayer, x: torch.Tensor, counts: list[int]):
    """Two grouped GEMMs (with the activation between) on tokens sorted by adapter in advance, with autograd."""
    seq_len, hidden = x.shape[1:]
    tokens = torch.randn(sum(counts) * seq_len, hidden, device=x.device, dtype=x.dtype)
    grad = torch.randn_like(tokens)
    offsets = (torch.tensor(counts, device=x.device).cumsum(0) * seq_len).to(torch.int32)
    down, _, up, _ = grouped_gemm.stacked_weights(layer.local_experts)
    down, up = down.detach().requires_grad_(True), up.detach().requires_grad_(True)

    def run():
        h = torch.relu(torch._grouped_mm(tokens.detach().requires_grad_(True), down, offs=offsets))
        torch._grouped_mm(h, up, offs=offsets).backward(grad)

    return run


def _ffn_step(hidden: int, x: torch.Tensor, grad: torch.Tensor, args):
    ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)).to(
        args.device, DTYPES[args.dtype]
    )

    def run():
        ffn(x.detach().requires_grad_(True)).backward(grad)

    return run


def bench_shape(hidden: int, experts: int, k: int, tokens: int, args) -> dict:
    """Times (ms) and peak memory (MiB) of variants (a)–(d) at one shape, plus the ratios."""
    seqs = tokens // args.seq_len
    torch.manual_seed(1)
    x = torch.randn(seqs, args.seq_len, hidden, device=args.device, dtype=DTYPES[args.dtype])
    grad = torch.randn_like(x)
    tasks = torch.randint(0, len(TASK_TYPES), (seqs,), device=args.device) if args.routing == "task" else None
    grouped = _layer(hidden, experts, k, "grouped", args)
    grouped_loop = _layer(hidden, experts, k, "grouped", args, form="loop")
    stock = _layer(hidden, experts, k, "deepspeed", args)
    dense = _layer(hidden, experts, None, "grouped", args)
    indices = grouped.route(x, tasks).indices
    if not torch.equal(indices, stock.route(x, tasks).indices):
        raise RuntimeError("grouped and stock layers route differently; the comparison would be unfair")
    counts = torch.bincount(indices.reshape(-1), minlength=experts).tolist()
    steps = {
        "a_grouped": _layer_step(grouped, x, tasks, grad),
        "a2_grouped_loop": _layer_step(grouped_loop, x, tasks, grad),
        "b_deepspeed": _layer_step(stock, x, tasks, grad),
        "c_dense": _dense_step(dense, x, tasks, grad),
        "d_floor": _floor_step(grouped, x, counts),
    }
    gathered = _layer(hidden, experts, k, "grouped", args, form="gathered_weights")
    steps["a3_gathered_weights"] = _layer_step(gathered, x, tasks, grad)
    if grouped_gemm.kernel_supported(x.device, x.dtype):
        steps["f_anchor"] = _anchor_step(grouped, x, counts)
    times = interleaved_medians(steps, args.repeats, args.warmup, args.device)
    row = {
        "hidden": hidden,
        "experts": experts,
        "k": k,
        "tokens": seqs * args.seq_len,
        "adapters_used": sum(c > 0 for c in counts),
    }
    row.update({f"{name}_ms": ms for name, ms in times.items()})
    row.update({f"{name}_peak_mib": peak_memory_mb(fn, args.device) for name, fn in steps.items()})
    row["speedup_vs_deepspeed"] = times["b_deepspeed"] / times["a_grouped"]
    row["ratio_to_floor"] = times["a_grouped"] / times["d_floor"]
    row["speedup_vs_dense"] = times["c_dense"] / times["a_grouped"]
    row["speedup_vs_loop"] = times["a2_grouped_loop"] / times["a_grouped"]
    row["form"] = choose_form(grouped.local_experts, x, k)
    row["gathered_weights_speedup"] = times["a_grouped"] / times["a3_gathered_weights"]
    if "f_anchor_ms" in row:
        row["ratio_to_anchor"] = times["a_grouped"] / times["f_anchor"]
    # adapter matmul work of the selected routes: fwd (2 GEMMs) + bwd (4 GEMMs), 2·d·r flops per token each
    row["floor_gflops"] = 6 * 2 * hidden * args.adapter_dim * seqs * args.seq_len * k / times["d_floor"] / 1e6
    return row


def bench_ffn(hidden: int, tokens: int, args) -> dict:
    x = torch.randn(tokens // args.seq_len, args.seq_len, hidden, device=args.device, dtype=DTYPES[args.dtype])
    step = _ffn_step(hidden, x, torch.randn_like(x), args)
    ms = interleaved_medians({"e_ffn": step}, args.repeats, args.warmup, args.device)["e_ffn"]
    return {
        "hidden": hidden,
        "tokens": x.shape[0] * x.shape[1],
        "e_ffn_ms": ms,
        "e_ffn_peak_mib": peak_memory_mb(step, args.device),
    }


def targets(rows: list[dict]) -> dict:
    """The issue's targets evaluated on the measured rows (None where the sweep lacks the shape)."""
    main = [r for r in rows if (r["hidden"], r["experts"], r["k"]) == (768, 8, 2) and r["tokens"] >= 8192]
    flat = {}
    for r4 in (r for r in rows if r["experts"] == 4):
        r16 = [r for r in rows if r["experts"] == 16 and all(r[key] == r4[key] for key in ("hidden", "k", "tokens"))]
        if r16:
            flat[f"h{r4['hidden']}_k{r4['k']}_t{r4['tokens']}"] = r16[0]["a_grouped_ms"] / r4["a_grouped_ms"]
    return {
        "speedup_vs_deepspeed_E8_k2_h768_ge8k (target >= 3)": [r["speedup_vs_deepspeed"] for r in main] or None,
        "ratio_to_anchor_E8_k2_h768_ge8k (target <= 1.5, bf16 on a GPU)": [r.get("ratio_to_anchor") for r in main]
        or None,
        "ratio_to_floor_E8_k2_h768_ge8k": [r["ratio_to_floor"] for r in main] or None,
        "speedup_vs_loop_E8_k2_h768_ge8k (the shipped form over the per-adapter loop)": [
            r["speedup_vs_loop"] for r in main
        ]
        or None,
        "gathered_weights_speedup_E8_k2_h768_ge8k (forced gathered weights over the shipped form)": [
            r["gathered_weights_speedup"] for r in main
        ]
        or None,
        "forms_E8_k2_h768_ge8k": [r["form"] for r in main] or None,
        "ratio_to_floor_max_all_shapes": max((r["ratio_to_floor"] for r in rows), default=None),
        "grouped_E16_over_E4 (target <= 1.2)": flat or None,
    }


def plot(rows: list[dict], ffn_rows: list[dict], path: Path, routing: str) -> None:
    """Time vs tokens at E = 8 (left) and grouped time vs E (right), one row of panels per hidden size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hiddens = sorted({r["hidden"] for r in rows})
    fig, axes = plt.subplots(len(hiddens), 2, figsize=(11, 4 * len(hiddens)), squeeze=False)
    for ax_row, hidden in zip(axes, hiddens):
        left, right = ax_row
        k_main = max(r["k"] for r in rows)
        e_main = 8 if any(r["experts"] == 8 for r in rows) else rows[0]["experts"]
        sel = sorted(
            (r for r in rows if r["hidden"] == hidden and r["k"] == k_main and r["experts"] == e_main),
            key=lambda r: r["tokens"],
        )
        for name in (v for v in VARIANTS if sel and f"{v}_ms" in sel[0]):
            left.plot([r["tokens"] for r in sel], [r[f"{name}_ms"] for r in sel], marker="o", label=name)
        ffn = sorted((r for r in ffn_rows if r["hidden"] == hidden), key=lambda r: r["tokens"])
        left.plot([r["tokens"] for r in ffn], [r["e_ffn_ms"] for r in ffn], marker="o", label="e_ffn")
        left.set(
            xscale="log",
            yscale="log",
            xlabel="tokens per batch",
            ylabel="fwd+bwd ms",
            title=f"hidden {hidden}, E={e_main}, k={k_main}, {routing} routing",
        )
        left.legend(fontsize=8)
        tokens = max(r["tokens"] for r in rows)
        for i, k in enumerate(sorted({r["k"] for r in rows})):
            pts = sorted(
                (r for r in rows if r["hidden"] == hidden and r["k"] == k and r["tokens"] == tokens),
                key=lambda r: r["experts"],
            )
            right.plot(
                [r["experts"] for r in pts],
                [r["a_grouped_ms"] for r in pts],
                marker="o",
                color=f"C{i}",
                label=f"grouped k={k}",
            )
            right.plot(
                [r["experts"] for r in pts],
                [r["b_deepspeed_ms"] for r in pts],
                marker="x",
                linestyle="--",
                color=f"C{i}",
                label=f"deepspeed k={k}",
            )
        right.set(
            xlabel="experts E",
            ylabel="fwd+bwd ms",
            title=f"hidden {hidden}, {tokens} tokens, {routing} routing",
            ylim=(0, None),
        )
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--adapter-dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--routing", choices=["learned", "task"], default="learned")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_dispatch.json"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/layer_dispatch.png"))
    args = parser.parse_args()
    rows, ffn_rows = [], []
    for hidden, tokens in itertools.product(args.hidden, args.tokens):
        ffn_rows.append(bench_ffn(hidden, tokens, args))
        for experts, k in itertools.product(args.experts, args.k):
            row = bench_shape(hidden, experts, k, tokens, args)
            rows.append(row)
            print(
                f"h={hidden} E={experts} k={k} tokens={row['tokens']}: grouped ({row['form']}) "
                f"{row['a_grouped_ms']:.1f} ms, "
                f"loop {row['a2_grouped_loop_ms']:.1f} ({row['speedup_vs_loop']:.2f}x), "
                f"deepspeed {row['b_deepspeed_ms']:.1f} ({row['speedup_vs_deepspeed']:.2f}x), "
                f"floor {row['d_floor_ms']:.1f} ({row['ratio_to_floor']:.2f}x)",
                flush=True,
            )
    config = {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()}
    write_json(
        args.out,
        {
            "config": config,
            "environment": environment(args.device),
            "targets": targets(rows),
            "rows": rows,
            "ffn": ffn_rows,
        },
    )
    plot(rows, ffn_rows, args.plot, args.routing)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
