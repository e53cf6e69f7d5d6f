"""Always-on adapters: S bottleneck adapters that every sequence uses beside its routed task adapters, from
stage 1 on (the shared experts of DeepSeekMoE, the shared experts of PLE's customised gate control).

With ``M`` the routed task-adapter mixture and ``A_j`` the always-on adapters, a layer adds
``w_0·M + Σ_j w_j·A_j(x)`` to the FFN's output, where ``w = (1+S)·softmax(m[key])`` and ``m`` is a learned row of
mixing logits per routing key (one row for a ``learned`` gate, which routes without keys). ``m`` starts at zero,
so every weight starts at 1: at initialisation the layer is the shared model (``FFN + A``) plus the task adapters,
and training can move each task towards its own adapter (``w_0 → 1+S``) or towards the shared ones. Up-projections
start at zero, so the layer still computes exactly ``FFN(x)`` at initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .adapters import BottleneckAdapter


class AlwaysOnAdapters(nn.Module):
    """The always-on adapters of one layer and their per-routing-key mixing logits ``mix_logits`` [rows, 1+S]."""

    def __init__(
        self,
        hidden_size: int,
        count: int,
        adapter_dim: int,
        activation: str,
        bias: bool,
        rows: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(
            BottleneckAdapter(hidden_size, adapter_dim, activation, bias) for _ in range(count)
        )
        for adapter in self.adapters:
            adapter.reset_parameters(generator)
        self.mix_logits = nn.Parameter(torch.zeros(rows, 1 + count))

    @property
    def count(self) -> int:
        return len(self.adapters)

    def weights(self, route_ids: Tensor | None, batch: int) -> Tensor:
        """[B, 1+S] fp32 mixing weights (task mixture first), ``(1+S)·softmax`` of each sequence's key row; without
        routing-key ids (a ``learned`` gate) every sequence takes row 0."""
        logits = self.mix_logits.float()
        rows = logits[route_ids] if route_ids is not None else logits[:1].expand(batch, -1)
        return (1 + self.count) * F.softmax(rows, dim=-1)

    def forward(self, hidden_states: Tensor, mixture: Tensor, route_ids: Tensor | None) -> Tensor:
        """``w_0·mixture + Σ_j w_j·A_j(hidden_states)``; the weights are applied in each adapter's bottleneck."""
        weights = self.weights(route_ids, hidden_states.size(0)).to(mixture.dtype)
        out = weights[:, 0].view(-1, 1, 1) * mixture
        for j, adapter in enumerate(self.adapters):
            out = out + adapter.scaled_forward(hidden_states, weights[:, j + 1].view(-1, 1, 1))
        return out

    @torch.no_grad()
    def key_weights(self) -> Tensor:
        """[rows, 1+S]: each routing key's mixing weights (what a per-task export folds)."""
        return (1 + self.count) * F.softmax(self.mix_logits.float(), dim=-1)
