"""Training-step time of a T5-small-shaped model with and without MTA layers, in one run.

Variants: the base model; MTA at the official placement (the last block of encoder and decoder);
MTA in every block. Bottleneck adapters (E experts, top-k, adapter_dim r), task-biased gate, random
weights (the T5-small shapes: d_model 512, d_ff 2048, 6+6 blocks, 8 heads, vocab 32128). One step is
forward + backward + AdamW step + zero_grad over all parameters (stage 1 trains everything); with
``--dtype bf16`` the parameters, activations and optimizer run in bfloat16.
Usage: python benchmarks/model_step.py [--batch 8] [--src-len 128] [--tgt-len 32] [--device cpu|cuda]
       [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from measure import environment, interleaved_medians, peak_memory_mb, write_json
from transformers import T5Config, T5ForConditionalGeneration

from mta_moe import MTAConfig, MTAModel

T5_SMALL = dict(
    d_model=512,
    d_ff=2048,
    d_kv=64,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    vocab_size=32128,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
PLACEMENTS = {"base": None, "mta_official": "last:1", "mta_all_layers": "all"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(placement: str | None, args) -> torch.nn.Module:
    """The base model (``placement`` None) or its MTA version with adapters in the chosen blocks."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**T5_SMALL))
    if placement is not None:
        cfg = MTAConfig(
            num_experts=args.experts,
            k=args.k,
            adapter_dim=args.adapter_dim,
            expert_kind="bottleneck",
            task_types=["classify", "nli", "generate"],
            gate_mode="task",
            inject_layers=placement,
            track_routing=False,
        )
        model = MTAModel(model, cfg)
    return model.to(args.device, DTYPES[args.dtype]).train()


def step_fn(model: torch.nn.Module, batch: dict, device: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    is_mta = isinstance(model, MTAModel)

    def run():
        extra = {"task_type_ids": batch["task_type_ids"]} if is_mta else {}
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], **extra
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def make_batch(args) -> dict:
    gen = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(3, T5_SMALL["vocab_size"], (args.batch, args.src_len), generator=gen),
        "attention_mask": torch.ones(args.batch, args.src_len, dtype=torch.long),
        "labels": torch.randint(3, T5_SMALL["vocab_size"], (args.batch, args.tgt_len), generator=gen),
        "task_type_ids": torch.randint(0, 3, (args.batch,), generator=gen),
    }
    return {key: value.to(args.device) for key, value in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=128)
    parser.add_argument("--tgt-len", type=int, default=32)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--adapter-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_step.json"))
    args = parser.parse_args()
    batch = make_batch(args)
    models = {name: build(placement, args) for name, placement in PLACEMENTS.items()}
    steps = {name: step_fn(model, batch, args.device) for name, model in models.items()}
    times = interleaved_medians(steps, args.repeats, args.warmup, args.device)
    peaks = {name: peak_memory_mb(fn, args.device) for name, fn in steps.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    result = {
        "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
        "environment": environment(args.device),
        "step_ms": times,
        "peak_mib": peaks,
        "parameters": params,
        "ratio_to_base": {name: times[name] / times["base"] for name in times},
        "target": "bf16 on a GPU: mta_official step <= 1.10 x base, mta_all_layers <= 1.25 x base",
    }
    write_json(args.out, result)
    for name in PLACEMENTS:
        print(
            f"{name:15s} {times[name]:8.1f} ms  x{times[name] / times['base']:.3f}  peak {peaks[name]:8.1f} MiB  "
            f"params {params[name] / 1e6:.2f}M"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
