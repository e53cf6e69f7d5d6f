"""Dynamic task loss weights (``mta.train.weighting``), on top of the static ``mta.train.task_weights``.

* ``{"method": "uncertainty", "lr": x}``: learned per-task log-variances ``s_t`` (Kendall et al.); the
  loss is ``mean_t (exp(-s_t)·L_t + s_t)`` over the tasks in the batch, so a task's weight ``exp(-s_t)``
  settles near ``1 / L_t``: noisy or hard tasks are down-weighted. Needs ``loss_reduction: task``.
* ``{"method": "validation", "rate": r, "max_weight": m}``: after each validation a task's weight becomes
  ``min(m, 1 + r·gap)``, ``gap`` being how far its score is below its single-task baseline
  (``mta.train.baseline_scores``) or, without one, below its best score so far; weights are then scaled
  to mean 1. Tasks falling behind get more of the gradient.
* ``{"method": "gradnorm", "alpha": a, "lr": x, "parameter": glob}``: GradNorm (Chen et al. 2018). Each
  step the weighted gradient norm of every task's loss w.r.t. a shared weight ``W`` is pulled towards
  ``mean norm · r_t^a``, with ``r_t`` the task's loss relative to its first loss, divided by the mean of
  those ratios: tasks that train slower get larger gradients. ``lr`` is the weights' step per update in
  units of the mean gradient norm (so it does not depend on W's scale). Weights are scaled to mean 1.

The current weights are logged every step (``task_weights`` records).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..collectives import all_reduce
from ..config import ConfigError
from .train_checks import WEIGHTING_OPTIONS as OPTIONS


class TaskBalance(nn.Module):
    """The per-task weights that multiply each task's share of the loss: static × dynamic.

    A submodule of what the engine trains, so learned log-variances are optimised and checkpointed
    with the model, and the dynamic weights (buffers + extra state) are restored on resume."""

    def __init__(self, config: Mapping[str, Any] | None, task_names: Sequence[str], static: Tensor) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.method = None if config is None else config["method"]
        self.options = {} if config is None else {**OPTIONS[self.method], **config}
        self.register_buffer("static", static.clone().float())
        self.register_buffer("dynamic", torch.ones(len(task_names)))
        self.log_vars = nn.Parameter(torch.zeros(len(task_names))) if self.method == "uncertainty" else None
        self.best: dict[str, float] = {}
        self.initial_loss: dict[str, float] = {}

    # ------------------------------------------------------------------ the loss
    def weights(self) -> Tensor:
        """Per-task loss weights in task-id order (carry gradient to the log-variances)."""
        if self.log_vars is not None:
            return self.static * torch.exp(-self.log_vars)
        return self.static * self.dynamic

    def regulariser(self, task_ids: Tensor) -> Tensor:
        """``mean_t s_t`` over the tasks in the batch (uncertainty weighting), else 0."""
        if self.log_vars is None:
            return torch.zeros((), device=task_ids.device)
        return self.log_vars[torch.unique(task_ids)].mean()

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer group for the log-variances (no weight decay), or none."""
        if self.log_vars is None:
            return []
        return [
            {
                "params": [self.log_vars],
                "name": "task_log_vars",
                "weight_decay": 0.0,
                **({"lr": float(self.options["lr"])} if self.options.get("lr") else {}),
            }
        ]

    def current(self) -> dict[str, float]:
        return {name: float(w) for name, w in zip(self.task_names, self.weights().detach().cpu())}

    # ------------------------------------------------------------------ validation-driven
    def after_validation(self, scores: Mapping[str, float], baselines: Mapping[str, float]) -> None:
        """Validation method: weight each task by its gap below its baseline (or its best so far)."""
        for task in self.task_names:
            if task in scores:
                self.best[task] = max(self.best.get(task, scores[task]), scores[task])
        if self.method != "validation":
            return
        rate, cap = float(self.options["rate"]), float(self.options["max_weight"])
        new = []
        for task in self.task_names:
            if task not in scores:
                new.append(1.0)
                continue
            reference = baselines.get(task, self.best[task])
            new.append(min(cap, 1.0 + rate * max(0.0, reference - scores[task])))
        weights = torch.tensor(new)
        self.dynamic.copy_(weights / weights.mean())

    # ------------------------------------------------------------------ GradNorm
    def gradnorm_parameters(
        self, model: nn.Module, exclude: Sequence[nn.Parameter] = ()
    ) -> list[tuple[str, nn.Parameter]]:
        """``W``: the parameters the ``parameter`` glob names, else the last trainable 2-D weight that every
        task shares (not an adapter expert, not an embedding). ``exclude``: parameters that are not trainable
        for the whole run (blocks waiting to be unfrozen)."""
        pattern = self.options.get("parameter")
        skip = {id(p) for p in exclude}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip]
        if pattern is not None:
            chosen = [(n, p) for n, p in named if fnmatchcase(n, pattern)]
            if not chosen:
                raise ConfigError(f"mta.train.weighting.parameter: {pattern!r} matches no trainable parameter")
            return chosen
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        candidates = [
            (n, p)
            for n, p in named
            if p.dim() == 2
            and id(p) not in embeddings
            and getattr(p, "allreduce", True)
            and "deepspeed_experts" not in n
        ]
        if not candidates:
            raise ConfigError(
                "mta.train.weighting: gradnorm found no shared trainable weight; name one in "
                "mta.train.weighting.parameter"
            )
        return candidates[-1:]

    def gradnorm_step(
        self, task_losses: Tensor, local: Tensor, anywhere: Tensor, shared: Sequence[Tensor], world: int
    ) -> None:
        """One GradNorm update of the weights from each task's mean loss ``task_losses[t]`` (in the graph)
        and its gradient w.r.t. ``shared``. ``local``: tasks in this rank's batch; ``anywhere``: in any
        rank's (every rank takes the same backward passes). Every rank computes the same update."""
        n = len(self.task_names)
        norms = torch.zeros(n, dtype=torch.float64)
        losses = torch.zeros(n, dtype=torch.float64)
        for t in anywhere.nonzero().flatten().tolist():
            grads = torch.autograd.grad(task_losses[t], list(shared), retain_graph=True, allow_unused=True)
            if local[t]:
                norms[t] = torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads if g is not None))
                losses[t] = float(task_losses[t].detach())
        counts = torch.stack([norms, losses, local.double().cpu()])
        if world > 1:
            all_reduce(counts)
        norms, losses, ranks = counts[0], counts[1], counts[2]
        active = ranks > 0
        if not active.any():
            return
        norms, losses = norms / ranks.clamp(min=1), losses / ranks.clamp(min=1)
        for t in active.nonzero().flatten().tolist():
            self.initial_loss.setdefault(self.task_names[t], float(losses[t]))
        w = self.dynamic.double()
        first = torch.tensor([self.initial_loss.get(name, 1.0) for name in self.task_names], dtype=torch.float64)
        ratio = (losses / first)[active]
        relative = ratio / ratio.mean()
        weighted = (w * norms)[active]
        target = weighted.mean() * relative ** float(self.options["alpha"])
        # d/dw_t Σ|w_t·‖∇L_t‖ − target_t| with the target held constant (as in the paper), in units of the
        # mean gradient norm so that ``lr`` does not depend on the scale of W's gradients
        step = torch.zeros_like(w)
        step[active] = torch.sign(weighted - target) * norms[active] / norms[active].mean().clamp(min=1e-30)
        w = (w - float(self.options["lr"]) * step).clamp(min=1e-3)
        self.dynamic.copy_((w / w.mean()).float())

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {"best": dict(self.best), "initial_loss": dict(self.initial_loss)}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
        self.initial_loss = dict(state.get("initial_loss", {}))
