"""Teacher-forced validation loss per task (what ``sampling.strategy: dynamic`` with ``dynamic_signal: loss``
re-weights the mixture by), sharded over ranks in lockstep so expert-parallel all-to-alls always pair up."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..collectives import all_reduce
from ..data import IGNORE_INDEX, Collator
from .losses import aligned_logits


@torch.no_grad()
def task_losses(
    model: torch.nn.Module,
    rows: Sequence[dict],
    tasks: Sequence[str],
    collate: Collator,
    batch_size: int,
    device: torch.device,
    mode: str,
) -> dict[str, float]:
    """Mean token cross-entropy of each task's rows (``rows[i]["task_id"]`` indexes ``tasks``), over all ranks."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = list(range(rank, len(rows), world))
    batches = math.ceil(len(rows) / world / batch_size)  # the same on every rank
    sums = torch.zeros(2, len(tasks), dtype=torch.float64)
    was_training = model.training
    model.eval()
    for b in range(batches):
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        real = len(chunk)
        batch = collate([rows[i] for i in (chunk or [0])])  # a rank out of rows runs a stand-in, uncounted
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.forward_batch(batch)
        logits, labels = aligned_logits(out.logits.float(), batch["labels"], mode)
        tokens = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        mask = labels != IGNORE_INDEX
        ids = batch["task_ids"].cpu()[:real]
        sums[0].index_add_(0, ids, (tokens * mask).sum(1).double().cpu()[:real])
        sums[1].index_add_(0, ids, mask.sum(1).double().cpu()[:real])
    model.train(was_training)
    if world > 1:
        all_reduce(sums)
    return {task: float(sums[0, i] / sums[1, i]) for i, task in enumerate(tasks) if sums[1, i] > 0}
