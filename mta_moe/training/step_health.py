"""The first non-finite training step, tracked on the device: read back only at the run's check points.

A per-step ``float(loss)`` makes the host wait for the device every step. Instead each step folds
"is the loss (and the gradient norm) finite" into a device tensor that remembers the first step that
was not, with its loss and norm; the trainer reads it (one synchronisation, summed over ranks) before
anything is logged, validated or saved, so nothing from a non-finite step ever reaches a record or a file.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..collectives import all_reduce

_NONE = torch.iinfo(torch.int64).max


class StepHealth:
    """``observe(step, loss, grad_norm)`` each step; ``first_bad()`` at a check point."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.first = torch.full((), _NONE, dtype=torch.int64, device=self.device)
        self.values = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, grad norm of that step
        self.tasks: dict[int, list[str]] = {}  # tasks of each step since the last check (host side)

    def observe(self, step: int, loss: Tensor, grad_norm: Tensor | float | None, tasks: list[str]) -> None:
        """Fold one step in (no synchronisation: ``loss`` and ``grad_norm`` stay where they are)."""
        loss = loss.detach().to(self.device, torch.float64).reshape(())
        norm = (
            torch.zeros((), dtype=torch.float64, device=self.device)
            if grad_norm is None
            else torch.as_tensor(grad_norm).detach().to(self.device, torch.float64).reshape(())
        )
        new = ~(torch.isfinite(loss) & torch.isfinite(norm)) & (self.first == _NONE)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.values = torch.where(new, torch.stack([loss, norm]), self.values)
        self.tasks[step] = tasks

    def first_bad(self, world: int, grad_norm_known: bool = True) -> tuple[int, float, float | None, list[str]] | None:
        """``(step, loss, grad norm, tasks)`` of the earliest non-finite step on any rank since the run began, or
        None; every rank must call it at the same point (one all-reduce when ``world`` > 1)."""
        first = self.first.clone()
        if world > 1:
            all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first.item())
        if step == _NONE:
            self.tasks.clear()
            return None
        mine = int(self.first.item()) == step
        if world > 1:  # every rank names the values of the lowest rank that saw that step
            rank = dist.get_rank()
            owner = torch.tensor(rank if mine else world, dtype=torch.int64, device=self.device)
            all_reduce(owner, op=dist.ReduceOp.MIN)
            mine = int(owner.item()) == rank
        values = self.values.clone() if mine else torch.zeros_like(self.values)
        if world > 1:
            all_reduce(values)  # one rank adds its (possibly non-finite) values onto zeros
        loss, norm = (float(v) for v in values.tolist())
        return step, loss, norm if grad_norm_known else None, self.tasks.get(step, [])
