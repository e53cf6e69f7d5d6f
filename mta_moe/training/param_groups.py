"""Optimizer parameter groups split the way DeepSpeed's MoE engine requires, optionally from name patterns."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Mapping, Sequence

from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from torch import nn

from ..config import ConfigError


def optimizer_param_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, name: str = "trainable"
) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups, expert params split into their expert-parallel groups.

    ``deepspeed.initialize`` asserts on a client optimizer whose groups mix expert and
    non-expert parameters; frozen parameters are left out so they stay bit-identical.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    group = {"params": params, "name": name, "lr": lr, "weight_decay": weight_decay}
    return [g for g in split_params_into_different_moe_groups_for_optimizer(group) if g["params"]]


def pattern_param_groups(
    model: nn.Module,
    patterns: Sequence[Mapping[str, Any]],
    lr: float,
    weight_decay: float,
    key: str = "mta.train.trainable",
    keep_frozen: Sequence[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Freeze every parameter no pattern matches; one group per pattern (first match wins) with its lr,
    each split into MoE / non-MoE groups. A pattern that matches no parameter is an error unless it is marked
    ``"optional": true`` (e.g. parts that only some models have).
    ``keep_frozen`` stay frozen even when matched (e.g. selector terms the gate mode does not use)."""
    frozen = {id(p) for p in keep_frozen}
    groups: list[dict[str, Any]] = [
        {
            "params": [],
            "name": f"trainable[{i}]",
            "lr": float(p.get("lr", lr)),
            "weight_decay": float(p.get("weight_decay", weight_decay)),
        }
        for i, p in enumerate(patterns)
    ]
    for name, param in model.named_parameters():
        index = next((i for i, p in enumerate(patterns) if fnmatchcase(name, p["pattern"])), None)
        if index is not None and id(param) not in frozen:
            groups[index]["params"].append(param)
        param.requires_grad_(index is not None and id(param) not in frozen)
    for i, group in enumerate(groups):
        matched = any(fnmatchcase(n, patterns[i]["pattern"]) for n, _ in model.named_parameters())
        if not matched and not patterns[i].get("optional", False):
            example = next(n for n, _ in model.named_parameters())
            raise ConfigError(
                f"{key}[{i}].pattern: {patterns[i]['pattern']!r} matches no parameter (names look like {example!r})"
            )
    out = []
    for group in (g for g in groups if g["params"]):
        out += [g for g in split_params_into_different_moe_groups_for_optimizer(group) if g["params"]]
    return out
