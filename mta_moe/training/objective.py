"""What one micro-batch back-propagates: cross-entropy reduced as ``mta.train.loss_reduction`` says,
weighted per task (static × dynamic, :mod:`.task_balance`), plus the routing aux loss; with PCGrad or
GradNorm, the gradient that the engine receives instead.

PCGrad and GradNorm need per-task gradients (``torch.autograd.grad``). DeepSpeed 0.19.8 hooks the outputs
of every engine forward so that any backward through them runs its backward prologue and reduction; a
per-task ``autograd.grad`` through them would trigger a reduction of gradients that do not exist. So for
those two the model's forward runs outside the engine, the final gradient ``g`` is computed with
``autograd.grad``, and the engine then runs ``Σ_p <p, g_p>`` as its forward (its gradient is exactly ``g``)
and back-propagates that with ``engine.backward``: accumulation, ZeRO 1/2 reduction, partitioning and
clipping all happen in DeepSpeed as for a plain loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..collectives import all_reduce
from ..data import IGNORE_INDEX
from .gradient_projection import pcgrad_gradient
from .losses import aligned_logits, reduce_loss
from .task_balance import TaskBalance


@dataclass
class MicroBatchLoss:
    backward: Tensor  # what engine.backward receives
    loss: Tensor  # the loss value (weighted CE + regulariser + aux), detached: read back only when logged
    per_sample: Tensor  # each sequence's mean token CE (unweighted)
    aux: Tensor  # the routing auxiliary loss, detached (0 without one)


def model_inputs(model, batch: dict[str, Tensor], mode: str) -> dict[str, Tensor]:
    """The forward's inputs without ``labels``: the loss is computed once, here, not also by the backbone.
    Seq2seq models get the decoder inputs the backbone would have built from the labels."""
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "task_type_ids": batch["task_type_ids"],
        "task_ids": batch["task_ids"],
    }
    if mode == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return inputs


class Objective:
    """``objective(engine, model, batch, step)`` → :class:`MicroBatchLoss` for one micro-batch."""

    def __init__(self, train_cfg: Any, balance: TaskBalance, mode: str, world: int) -> None:
        self.reduction = train_cfg.loss_reduction
        self.projection = train_cfg.gradient_projection
        self.seed = train_cfg.seed
        self.balance, self.mode, self.world = balance, mode, world
        self.gradnorm_params: list[Tensor] | None = None
        self.conflicts: list[float] = []

    @property
    def custom_gradient(self) -> bool:
        return self.projection is not None or self.gradnorm_params is not None

    def __call__(
        self, engine, model, batch: dict[str, Tensor], step: int, token_normalizer: float | None = None
    ) -> MicroBatchLoss:
        forward = model if self.custom_gradient else engine
        out = forward(**model_inputs(model, batch, self.mode))
        logits, labels = aligned_logits(out.logits, batch["labels"], self.mode)
        tokens = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        mask, task_ids = labels != IGNORE_INDEX, batch["task_ids"]
        weights = self.balance.weights().to(tokens.device)
        loss, per_sample = reduce_loss(tokens, mask, task_ids, self.reduction, weights, token_normalizer)
        loss = loss + self.balance.regulariser(task_ids)
        aux = model.last_aux_loss
        total = loss if aux is None else loss + aux.to(loss.dtype)
        result = MicroBatchLoss(
            total,
            total.detach(),
            per_sample,
            torch.zeros_like(total.detach()) if aux is None else aux.detach().to(total.dtype),
        )
        if not self.custom_gradient:
            return result
        params = engine.module.trainable_parameters()
        if self.gradnorm_params is not None:
            self._gradnorm(per_sample, task_ids)
        if self.projection == "pcgrad":
            grads = self._pcgrad(tokens, mask, task_ids, weights, params, step, token_normalizer)
            if aux is not None and aux.requires_grad:
                grads = _add(grads, torch.autograd.grad(aux, params, retain_graph=True, allow_unused=True))
        else:
            grads = list(torch.autograd.grad(total, params, allow_unused=True))
        result.backward = engine(parameter_gradients=grads)
        return result

    def pop_conflicts(self) -> float | None:
        """Mean share of conflicting task pairs since the last call (PCGrad), or None."""
        if not self.conflicts:
            return None
        value = sum(self.conflicts) / len(self.conflicts)
        self.conflicts = []
        return value

    # ------------------------------------------------------------------ GradNorm
    def presence(self, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Which tasks are in this rank's batch, and in any rank's."""
        local = torch.zeros(len(self.balance.task_names), dtype=torch.float64)
        local[task_ids.cpu().unique()] = 1.0
        anywhere = local.clone()
        if self.world > 1:
            all_reduce(anywhere)
        return local > 0, anywhere > 0

    def _gradnorm(self, per_sample: Tensor, task_ids: Tensor) -> None:
        local, anywhere = self.presence(task_ids)
        means = [
            per_sample[task_ids == t].sum() / max(1, int((task_ids == t).sum()))
            for t in range(len(self.balance.task_names))
        ]
        self.balance.gradnorm_step(torch.stack(means), local, anywhere, self.gradnorm_params, self.world)

    # ------------------------------------------------------------------ PCGrad
    def _pcgrad(
        self,
        tokens: Tensor,
        mask: Tensor,
        task_ids: Tensor,
        weights: Tensor,
        params: list[Tensor],
        step: int,
        normalizer: float | None,
    ) -> list[Tensor | None]:
        """Each present task's share of the weighted loss (the shares sum to the loss), projected."""
        present = task_ids.unique().tolist()
        shares = []
        for t in present:
            onehot = torch.zeros_like(weights)
            onehot[t] = 1.0
            share = reduce_loss(tokens, mask, task_ids, self.reduction, weights * onehot, normalizer)[0]
            if self.balance.log_vars is not None:
                share = share + self.balance.log_vars[t] / len(present)
            shares.append(share)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        grads, stats = pcgrad_gradient(shares, params, generator)
        self.conflicts.append(stats["conflicts"])
        return grads


def _add(a: list[Tensor | None], b: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b)]


class TrainingModule(nn.Module):
    """What the DeepSpeed engine trains: the MTA model plus the loss's own state (:class:`TaskBalance`).

    ``forward(parameter_gradients=g)`` returns ``Σ_p <p, g_p>`` over :meth:`trainable_parameters` (None
    entries skipped): back-propagated by the engine, it deposits exactly ``g`` as the gradient."""

    def __init__(self, model: nn.Module, balance: TaskBalance) -> None:
        super().__init__()
        self.model = model
        self.balance = balance

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, *args, parameter_gradients: Sequence[Tensor | None] | None = None, **kwargs):
        if parameter_gradients is None:
            return self.model(*args, **kwargs)
        params = self.trainable_parameters()
        if len(params) != len(parameter_gradients):
            raise ValueError(
                f"parameter_gradients: {len(parameter_gradients)} given for {len(params)} trainable parameters"
            )
        terms = [(p * g.detach().to(p.dtype)).sum() for p, g in zip(params, parameter_gradients) if g is not None]
        return torch.stack(terms).sum() if terms else params[0].sum() * 0
