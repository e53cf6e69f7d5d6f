"""Forward+backward time of one MTA layer's adapter mixture under different dispatches, in one run.

(a) grouped: the shipped sequence-grouped dispatch; (b) deepspeed: DeepSpeed 0.19.8's stock MOELayer
dispatch with the same routing; (c) dense: every adapter on every token (k = E, grouped);
(d) floor: only the selected adapters' matmuls on pre-grouped blocks, no routing work;
(e) ffn: one plain d -> 4d -> d FFN. Medians of repeated runs; ratios are taken within the run.
Usage: python benchmarks/layer_dispatch.py [--hidden 768] [--experts 8] [--k 2] [--tokens 8192] [--out F]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mta_moe import MTAConfig, MTALayer  # noqa: E402


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _layer(args, k: int | None, dispatch: str) -> MTALayer:
    torch.manual_seed(0)
    cfg = MTAConfig(num_experts=args.experts, k=k, adapter_dim=args.adapter_dim, dispatch=dispatch,
                    gate_mode="learned", selector_init_std=1.0, task_types=["t"])
    layer = MTALayer(cfg, args.hidden, nn.Identity()).to(args.device)
    with torch.no_grad():
        for p in layer.local_experts.parameters():
            p.normal_(0, 0.02)
    return layer


def bench(args) -> dict:
    seqs = args.tokens // args.seq_len
    x = torch.randn(seqs, args.seq_len, args.hidden, device=args.device)

    def moe_step(layer):
        def run():
            xi = x.detach().requires_grad_(True)
            out = layer._dispatch(xi, layer.route(xi))
            out.sum().backward()
        return run

    results = {}
    grouped = _layer(args, args.k, "grouped")
    results["a_grouped_ms"] = _time(moe_step(grouped), args.repeats)
    results["b_deepspeed_ms"] = _time(moe_step(_layer(args, args.k, "deepspeed")), args.repeats)
    results["c_dense_ms"] = _time(moe_step(_layer(args, None, "grouped")), args.repeats)
    routing = grouped.route(x)
    counts = torch.bincount(routing.indices.reshape(-1), minlength=args.experts).tolist()
    blocks = [torch.randn(c * args.seq_len, args.hidden, device=args.device) for c in counts]

    def floor():
        outs = [e(b.requires_grad_(True)) for e, b in zip(grouped.local_experts, blocks)]
        sum(o.sum() for o in outs).backward()
    results["d_floor_ms"] = _time(floor, args.repeats)
    ffn = nn.Sequential(nn.Linear(args.hidden, 4 * args.hidden), nn.GELU(),
                        nn.Linear(4 * args.hidden, args.hidden)).to(args.device)

    def plain():
        xi = x.detach().requires_grad_(True)
        ffn(xi).sum().backward()
    results["e_ffn_ms"] = _time(plain, args.repeats)
    results["speedup_vs_deepspeed"] = results["b_deepspeed_ms"] / results["a_grouped_ms"]
    results["ratio_to_floor"] = results["a_grouped_ms"] / results["d_floor_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--adapter-dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_dispatch.json"))
    args = parser.parse_args()
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch": torch.__version__, "threads": torch.get_num_threads(), **bench(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
