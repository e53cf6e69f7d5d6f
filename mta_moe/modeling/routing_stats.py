"""Routing statistics of one MTA layer: which adapters each routing key's (task type or task) sequences use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..collectives import all_reduce as sum_over_ranks
from .gate import SequenceRouting


@dataclass
class RoutingSnapshot:
    """Accumulated statistics. Rows are routing keys (task types, or tasks) in id order, plus a last row for
    sequences without an id."""

    row_names: list[str]
    sequences: Tensor  # [T+1] sequences seen per task type
    adapter_counts: Tensor  # [T+1, E] sequences that used each adapter
    weight_sums: Tensor  # [T+1, E] summed gate weights (0 where unused)
    mix_sums: Tensor | None  # [T+1, 1+S] summed stage-2 mixing weights (task mixture, shared adapters)

    @property
    def mean_gate_weights(self) -> Tensor:
        """[T+1, E] mean weight each adapter got per sequence of a routing key (0 rows where none were seen)."""
        return self.weight_sums / self.sequences.clamp(min=1).unsqueeze(1)

    @property
    def mean_mix_weights(self) -> Tensor | None:
        if self.mix_sums is None:
            return None
        return self.mix_sums / self.sequences.clamp(min=1).unsqueeze(1)

    def as_dict(self) -> dict:
        out = {
            "rows": self.row_names,
            "sequences": self.sequences.tolist(),
            "adapter_counts": self.adapter_counts.tolist(),
            "mean_gate_weights": self.mean_gate_weights.tolist(),
        }
        if self.mix_sums is not None:
            out["mean_mix_weights"] = self.mean_mix_weights.tolist()
        return out


class RoutingStatistics:
    """Accumulates per-(routing key, adapter) sequence counts and gate weights across forwards."""

    def __init__(self, routing_keys: list[str], num_experts: int) -> None:
        self.row_names = list(routing_keys) + ["<no task id>"]
        self.num_experts = num_experts
        self.reset()

    def reset(self) -> None:
        rows = len(self.row_names)
        self.sequences = torch.zeros(rows, dtype=torch.float64)
        self.adapter_counts = torch.zeros(rows, self.num_experts, dtype=torch.float64)
        self.weight_sums = torch.zeros(rows, self.num_experts, dtype=torch.float64)
        self.mix_sums: Tensor | None = None

    @torch.no_grad()
    def update(self, routing: SequenceRouting, mix_weights: Tensor | None = None) -> None:
        device = routing.indices.device
        if self.sequences.device != device:
            self._to(device)
        batch = routing.indices.size(0)
        rows = (
            routing.route_ids
            if routing.route_ids is not None
            else torch.full((batch,), len(self.row_names) - 1, device=device, dtype=torch.long)
        )
        dense = routing.dense_weights().double()
        self.sequences.index_add_(0, rows, torch.ones(batch, dtype=torch.float64, device=device))
        self.adapter_counts.index_add_(0, rows, (dense > 0).double())
        self.weight_sums.index_add_(0, rows, dense)
        if mix_weights is not None:
            if self.mix_sums is None:
                self.mix_sums = torch.zeros(
                    len(self.row_names), mix_weights.size(1), dtype=torch.float64, device=device
                )
            self.mix_sums.index_add_(0, rows, mix_weights.double())

    def snapshot(self, all_reduce: bool = False, group=None) -> RoutingSnapshot:
        """A copy of the statistics; with ``all_reduce`` summed over ``group`` (default: all ranks)."""
        tensors = [self.sequences.clone(), self.adapter_counts.clone(), self.weight_sums.clone()]
        mix = None if self.mix_sums is None else self.mix_sums.clone()
        if all_reduce and dist.is_available() and dist.is_initialized():
            for t in tensors:
                sum_over_ranks(t, group=group)
            if mix is not None:
                sum_over_ranks(mix, group=group)
        return RoutingSnapshot(list(self.row_names), *tensors, mix)

    def _to(self, device: torch.device) -> None:
        self.sequences = self.sequences.to(device)
        self.adapter_counts = self.adapter_counts.to(device)
        self.weight_sums = self.weight_sums.to(device)
        if self.mix_sums is not None:
            self.mix_sums = self.mix_sums.to(device)
