"""Optimizer parameter groups split the way DeepSpeed's MoE engine requires."""
from __future__ import annotations

from typing import Any

from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from torch import nn


def optimizer_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                           name: str = "trainable") -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups, expert params split into their expert-parallel groups.

    ``deepspeed.initialize`` asserts on a client optimizer whose groups mix expert and
    non-expert parameters; frozen parameters are left out so they stay bit-identical.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    group = {"params": params, "name": name, "lr": lr, "weight_decay": weight_decay}
    return [g for g in split_params_into_different_moe_groups_for_optimizer(group) if g["params"]]
