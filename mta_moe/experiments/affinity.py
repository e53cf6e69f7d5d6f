"""Inter-task affinity and the adapter assignment it implies.

Two measures on the parameters every task shares (a fully shared model: everything trainable):

* **lookahead** (TAG, Fifty et al. 2021, over a short horizon): ``Z[i, j] = 1 − L_j(θ_i) / L_j(θ)``, where
  ``θ_i`` is θ after ``horizon`` steps of the run's own optimizer (its Adam moments as they are) on task i's
  training batches alone, and ``L_j`` task j's loss on held-out probe rows: the relative decrease of j's loss
  when only i is trained (positive: i helps j). TAG takes one step; a few steps average over batches;
* **gradient cosine**: ``cos(g_i, g_j)`` of the per-task gradients on the probe rows.

Both are averaged over the measurement points of a probe run (or taken once at a trained model). The
grouping uses the lookahead, symmetrised and normalised by the self-affinities, ``R[i, j] = Z̄[i, j] /
sqrt(Z̄[i, i]·Z̄[j, j])`` (``Z̄ = (Z + Zᵀ)/2``, clipped to [−1, 1]), a correlation-like number in which 1 is
"helps j as much as j helps itself". Groups are merged by complete linkage: two groups share an adapter only
while every pair of their tasks has ``R`` above the threshold, so tasks that hurt each other (``R < 0``) never
share one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class Affinity:
    """Affinity matrices over ``tasks`` (rows/columns in that order), averaged over ``points`` measurements."""

    tasks: list[str]
    lookahead: list[list[float]]  # Z[i][j]: relative loss decrease of j after a step on i
    cosine: list[list[float]]  # cos(g_i, g_j)
    points: int
    steps: list[int] = field(default_factory=list)  # probe steps measured at

    def normalised(self) -> list[list[float]]:
        """``R``: the symmetrised lookahead divided by the geometric mean of the two self-affinities."""
        z = torch.tensor(self.lookahead, dtype=torch.float64)
        sym = (z + z.t()) / 2
        own = sym.diagonal()
        scale = own.clamp(min=1e-12).sqrt()
        r = (sym / scale.unsqueeze(0) / scale.unsqueeze(1)).clamp(-1.0, 1.0)
        unusable = own <= 0  # training on the task did not lower its own held-out loss: no reference scale
        r[unusable] = 0.0
        r[:, unusable] = 0.0
        r.fill_diagonal_(1.0)
        return r.tolist()

    def warnings(self) -> list[str]:
        own = [self.lookahead[i][i] for i in range(len(self.tasks))]
        return [
            f"{task}: training on it for the lookahead horizon did not lower its own probe loss "
            f"(Z = {value:+.4f}); its affinities are set to 0, so it gets an adapter of its own"
            for task, value in zip(self.tasks, own)
            if value <= 0
        ]

    def as_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "lookahead": self.lookahead,
            "cosine": self.cosine,
            "normalised": self.normalised(),
            "points": self.points,
            "steps": self.steps,
            "warnings": self.warnings(),
        }


LossFn = Callable[[nn.Module, dict[str, Tensor]], Tensor]
BatchSource = Callable[[str, int], dict[str, Tensor]]  # (task, step) -> a training batch of that task


def measure(
    model: nn.Module,
    probe: Mapping[str, dict[str, Tensor]],
    loss_fn: LossFn,
    params: Sequence[nn.Parameter],
    train_batch: BatchSource,
    optimizer: torch.optim.Optimizer,
    horizon: int = 10,
) -> tuple[Tensor, Tensor]:
    """One measurement: (lookahead Z [T, T], gradient cosine [T, T]) at the model's current parameters.
    ``probe``: held-out rows per task; ``train_batch(task, s)``: the s-th training batch of a task for the
    lookahead, taken with ``optimizer`` from its current state (warm Adam moments make a step the size of a
    training step). Parameters and optimizer state are restored exactly afterwards."""
    tasks = list(probe)
    was_training = model.training
    model.eval()  # no dropout: losses and gradients of one function
    grads = []
    for task in tasks:
        g = torch.autograd.grad(loss_fn(model, probe[task]), params, allow_unused=True)
        grads.append(
            torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).double() for x, p in zip(g, params)])
        )
    flat = torch.stack(grads)
    cosine = F.normalize(flat, dim=1) @ F.normalize(flat, dim=1).t()
    saved = [p.detach().clone() for p in params]
    state = copy.deepcopy(optimizer.state_dict())
    with torch.no_grad():
        before = torch.tensor([float(loss_fn(model, probe[t])) for t in tasks], dtype=torch.float64)
    lookahead = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    for i, task in enumerate(tasks):
        for step in range(horizon):
            optimizer.zero_grad()
            loss_fn(model, train_batch(task, step)).backward()
            optimizer.step()
        with torch.no_grad():
            for j, other in enumerate(tasks):
                lookahead[i, j] = 1.0 - float(loss_fn(model, probe[other])) / max(float(before[j]), 1e-12)
            for p, value in zip(params, saved):
                p.copy_(value)
        optimizer.load_state_dict(copy.deepcopy(state))
    optimizer.zero_grad(set_to_none=True)
    model.train(was_training)
    return lookahead, cosine


def average(tasks: Sequence[str], measurements: Sequence[tuple[Tensor, Tensor]], steps: Sequence[int]) -> Affinity:
    lookahead = torch.stack([m[0] for m in measurements]).mean(0)
    cosine = torch.stack([m[1] for m in measurements]).mean(0)
    return Affinity(list(tasks), lookahead.tolist(), cosine.tolist(), len(measurements), list(steps))


def group_tasks(
    tasks: Sequence[str], normalised: Sequence[Sequence[float]], threshold: float = 0.1, max_groups: int | None = None
) -> list[list[str]]:
    """Complete-linkage groups: merge the two groups whose weakest pair is strongest, while that pair's
    affinity exceeds ``threshold``; with ``max_groups``, keep merging past the threshold but never a pair
    with negative affinity (then a ValueError says why the groups cannot be fewer)."""
    r = torch.tensor(normalised, dtype=torch.float64)
    groups = [[i] for i in range(len(tasks))]

    def link(a: list[int], b: list[int]) -> float:
        return min(float(r[i, j]) for i in a for j in b)

    while len(groups) > 1:
        best = max(
            ((link(a, b), x, y) for x, a in enumerate(groups) for y, b in enumerate(groups) if x < y),
            key=lambda item: item[0],
        )
        value, x, y = best
        over = max_groups is not None and len(groups) > max_groups
        if value <= threshold and not (over and value >= 0):
            if over:
                names = [[tasks[i] for i in g] for g in groups]
                raise ValueError(
                    f"--max-groups {max_groups}: the tasks cannot share fewer than {len(groups)} "
                    f"adapters without putting tasks of negative affinity together (groups {names})"
                )
            break
        groups[x] = sorted(groups[x] + groups[y])
        del groups[y]
    return sorted(([tasks[i] for i in g] for g in groups), key=lambda g: tasks.index(g[0]))


def assignment_config(groups: Sequence[Sequence[str]], ep_size: int = 1) -> dict:
    """The layer keys for routing by task with one adapter per group: ``route_by``, ``tasks``,
    ``num_experts`` (padded to a multiple of ``ep_size``), ``task_adapter_assignment`` and ``k`` = 1."""
    tasks = [t for g in groups for t in g]
    experts = len(groups) + (-len(groups)) % ep_size
    return {
        "route_by": "task",
        "tasks": sorted(tasks),
        "num_experts": experts,
        "k": 1,
        "task_adapter_assignment": {t: [gi] for gi, g in enumerate(groups) for t in g},
    }
