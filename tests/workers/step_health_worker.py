"""Runs under torchrun: each rank folds its own steps into a StepHealth; rank 1 alone sees a non-finite loss at
step 3 and rank 0 at step 5; every rank writes what ``first_bad`` names to <out>/rank<R>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mta_moe.training.step_health import StepHealth  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    health = StepHealth("cpu")
    for step in range(1, 7):
        loss = 1.0 / step
        if (rank, step) in ((1, 3), (0, 5)):
            loss = float("inf")
        health.observe(step, torch.tensor(loss), torch.tensor(0.5 + step), [f"task{step}"])
    step, loss, norm, tasks = health.first_bad(world)
    (out / f"rank{rank}.json").write_text(json.dumps({"step": step, "loss": str(loss), "norm": norm, "tasks": tasks}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
