"""Gradual unfreezing of a (pretrained) backbone in stage 1, ``mta.train.unfreeze``:
``{"start_step": s, "every": n}``. Until step ``s`` only the MTA parameters and the backbone's parameters
outside its blocks (embeddings, final norms, head) train; at step ``s`` the top block unfreezes, then one
more block every ``n`` steps, from the top down (for encoder-decoders: the decoder's blocks, then the
encoder's).

DeepSpeed builds its optimizer (ZeRO's flat groups) once, from the parameters that require gradients at
``initialize``. So every block is trainable then, each in its own optimizer group; a block waiting for its
turn has ``requires_grad`` off (no gradient, so Adam's update is exactly zero) and its group's weight
decay at 0 (so decoupled decay does not shrink it either); both are restored when it unfreezes, and its Adam
state restarts then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from torch import nn

from ..modeling.backbones import find_stack
from ..modeling.layer import component_of

GROUP_PREFIX = "unfreeze:"


@dataclass
class Unit:
    """One block that unfreezes as a whole."""

    name: str
    params: list[nn.Parameter]


def backbone_blocks(model: nn.Module) -> list[Unit]:
    """The backbone's blocks, top first (last stack listed first), each without its MTA parameters."""
    mta_ids = {id(p) for n, p in model.named_parameters() if component_of(n) != "backbone"}
    units = []
    for stack, suffix in reversed(list(model.family.stacks.items())):
        _, blocks = find_stack(model.base_model, suffix)
        for index in reversed(range(len(blocks))):
            params = [p for p in blocks[index].parameters() if id(p) not in mta_ids]
            if params:
                units.append(Unit(f"{stack}.{index}", params))
    return units


class UnfreezeSchedule:
    """Which blocks train at a step, and the optimizer groups that make switching them possible."""

    def __init__(self, model: nn.Module, start_step: int, every: int) -> None:
        self.model, self.start_step, self.every = model, start_step, every
        self.units = backbone_blocks(model)
        self.unfrozen = -1  # number of unfrozen blocks last applied

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """One group per block (all trainable at ``initialize``), then the parameters that always train
        (MTA parameters, embeddings, norms, head), split into DeepSpeed's MoE / non-MoE groups."""
        scheduled = {id(p) for unit in self.units for p in unit.params}
        for unit in self.units:
            for param in unit.params:
                param.requires_grad_(True)
        rest = {
            "params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in scheduled],
            "name": "trainable",
            "lr": lr,
            "weight_decay": weight_decay,
        }
        blocks = [
            {
                "params": unit.params,
                "name": GROUP_PREFIX + unit.name,
                "lr": lr,
                "weight_decay": weight_decay,
                "unfreeze_weight_decay": weight_decay,
            }
            for unit in self.units
        ]
        return [g for g in split_params_into_different_moe_groups_for_optimizer(rest) if g["params"]] + blocks

    def count(self, step: int) -> int:
        if step < self.start_step:
            return 0
        return min(len(self.units), (step - self.start_step) // self.every + 1)

    def apply(self, step: int, optimizer: Any) -> list[str]:
        """Set ``requires_grad`` and weight decay for ``step`` (``optimizer``: the engine's); returns the blocks
        unfrozen by this call. A block whose turn comes exactly at ``step`` restarts its Adam step count."""
        n = self.count(step)
        if n == self.unfrozen:
            return []
        base = getattr(optimizer, "optimizer", optimizer)  # ZeRO / bf16 wrappers keep torch's AdamW inside
        by_name = {g.get("name"): g for g in base.param_groups}
        starting = range(self.count(step - 1) if step > 0 else 0, n)
        for i, unit in enumerate(self.units):
            live = i < n
            for param in unit.params:
                param.requires_grad_(live)
            group = by_name[GROUP_PREFIX + unit.name]
            group["weight_decay"] = group["unfreeze_weight_decay"] if live else 0.0
            if i in starting:
                _restart_adam(base, group)
        newly = [u.name for u in self.units[max(self.unfrozen, 0) : n]]
        self.unfrozen = n
        return newly


def _restart_adam(optimizer: Any, group: dict[str, Any]) -> None:
    """Zero a group's Adam state. Under ZeRO a waiting block's flat partition is stepped with zero gradients,
    so its step count grows while its moments stay 0; left alone, bias correction would make its first updates
    after unfreezing several times larger than a fresh Adam's. (Without ZeRO it has no state yet.)"""
    for param in group["params"]:
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value):
                value.zero_()
