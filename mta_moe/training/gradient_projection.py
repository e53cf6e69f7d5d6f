"""PCGrad (Yu et al. 2020), ``mta.train.gradient_projection: "pcgrad"``: per-task gradients of the trainable
parameters; where two conflict (negative dot product) the component of one along the other is removed,
tasks taken in a random order; the sum of the projected gradients is the update direction.

Per-task gradients come from ``torch.autograd.grad``; the engine receives the result as described in
:mod:`.objective`. Each rank projects its own micro-batch's gradients before DeepSpeed averages them
(per-device PCGrad).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def project_conflicts(grads: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
    """PCGrad on flat per-task gradients ``[T][N]``: each task's gradient with the components that conflict
    (negative dot product) with the other tasks' original gradients removed, the others taken in a random
    order; returns them ``[T, N]`` and the number of conflicting ordered pairs among the originals."""
    originals = torch.stack([g.double() for g in grads])
    conflicts = int(((originals @ originals.T) < 0).sum())
    projected = originals.clone()
    for i in range(len(grads)):
        g = projected[i]
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j == i:
                continue
            dot = torch.dot(g, originals[j])
            if dot < 0:
                g -= dot / originals[j].pow(2).sum().clamp(min=1e-30) * originals[j]
    return projected, conflicts


def pcgrad_gradient(
    task_losses: Sequence[Tensor], params: Sequence[nn.Parameter], generator: torch.Generator
) -> tuple[list[Tensor | None], dict[str, float]]:
    """The PCGrad combination of the tasks' gradients w.r.t. ``params`` (None where no task reaches a
    parameter), and the share of conflicting task pairs.

    ``task_losses``: each task's share of the loss (they sum to the loss), all in one retained graph."""
    reached = [False] * len(params)
    flats = []
    for loss in task_losses:
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        reached = [r or g is not None for r, g in zip(reached, grads)]
        flats.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for p, g in zip(params, grads)])
        )
    projected, conflicts = project_conflicts(flats, generator)
    total = projected.sum(0)
    out: list[Tensor | None] = []
    offset = 0
    for p, used in zip(params, reached):
        out.append(total[offset : offset + p.numel()].view_as(p).to(p.dtype) if used else None)
        offset += p.numel()
    pairs = len(task_losses) * (len(task_losses) - 1)
    return out, {"conflicts": conflicts / pairs if pairs else 0.0}
