"""Runs under torchrun: load a saved MTA model with ep_size 2 and compute logits; each rank writes rank<R>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from mta_moe import MTAModel

if __name__ == "__main__":
    saved, inputs_file, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    deepspeed.init_distributed(dist_backend="gloo")
    model = MTAModel.from_pretrained(saved, ep_size=2).eval()
    engine, *_ = deepspeed.initialize(model=model, config={"train_micro_batch_size_per_gpu": 4, "steps_per_print": 10**9})
    batch = torch.load(inputs_file)
    with torch.no_grad():
        logits = engine(**batch["inputs"], task_type_ids=batch["tasks"]).logits
    layer = next(iter(model.mta_layers.values()))
    (out / f"rank{dist.get_rank()}.json").write_text(
        json.dumps({"logits": logits.tolist(), "experts": layer.global_expert_ids(), "local": layer.num_local_experts})
    )
    dist.barrier()
    dist.destroy_process_group()
