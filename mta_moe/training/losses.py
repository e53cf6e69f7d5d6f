"""How per-token cross-entropy becomes the training loss: the reduction over tokens, sequences and
tasks, and static per-task weights (``mta.train.loss_reduction`` / ``mta.train.task_weights``).

* ``token`` (Hugging Face's default): the mean over all target tokens of the batch. A task with
  20-token targets weighs ten times more than one with 2-token labels.
* ``sequence``: each sequence's mean token loss, averaged over the batch.
* ``task``: each task's mean sequence loss, averaged over the tasks present in the batch, so every
  task weighs the same whatever its target length or sampling rate.

Task weights multiply each sequence's (or task's) share; with all weights 1 the reductions are
the plain means above.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..config import ConfigError
from ..typed_config import check_known_tasks
from .train_checks import REDUCTIONS


def aligned_logits(logits: torch.Tensor, labels: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [batch, positions, classes], labels [batch, positions])`` that score each other: causal models
    predict the next token (shifted by one); a classifier's ``[batch, classes]`` logits are one position."""
    if mode == "causal":
        return logits[:, :-1], labels[:, 1:]
    if mode == "classify":
        return logits.unsqueeze(1), labels
    return logits, labels


def task_weight_vector(
    weights: Mapping[str, float], task_names: Sequence[str], key: str = "mta.train.task_weights"
) -> torch.Tensor:
    """Weights in task-id order (1.0 for tasks not named); unknown task names are a ConfigError."""
    check_known_tasks(weights, task_names, key)
    return torch.tensor([float(weights.get(name, 1.0)) for name in task_names])


def reduce_loss(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    task_ids: torch.Tensor,
    reduction: str,
    weights: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_losses``, ``mask``: [B, T]; ``task_ids``: [B]; ``weights``: [num_tasks] or None; ``normalizer``:
    the ``token`` reduction's divisor instead of this batch's token count (length-grouped batches pass the
    window's mean count, so a token weighs the same in a batch of short targets as in one of long targets).

    Returns the scalar loss and the per-sequence mean token losses (unweighted, for logging)."""
    mask = mask.to(token_losses.dtype)
    counts = mask.sum(1)
    per_sequence = (token_losses * mask).sum(1) / counts.clamp(min=1)
    w = torch.ones_like(per_sequence) if weights is None else weights.to(per_sequence)[task_ids]
    if reduction == "token":
        divisor = counts.sum().clamp(min=1) if normalizer is None else normalizer
        loss = (w * (token_losses * mask).sum(1)).sum() / divisor
    elif reduction == "sequence":
        loss = (w * per_sequence).sum() / per_sequence.numel()
    elif reduction == "task":
        present, inverse = torch.unique(task_ids, return_inverse=True)
        sums = torch.zeros(len(present), dtype=per_sequence.dtype, device=per_sequence.device)
        sizes = torch.zeros_like(sums)
        sums.index_add_(0, inverse, w * per_sequence)
        sizes.index_add_(0, inverse, torch.ones_like(per_sequence))
        loss = (sums / sizes).mean()
    else:
        raise ConfigError(f"mta.train.loss_reduction: must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return loss, per_sequence
