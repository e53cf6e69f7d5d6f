"""Training: the run config, the trainer, launchers. ``optimizer_param_groups`` (DeepSpeed MoE parameter groups)
loads on first use, so reading and checking a config does not import DeepSpeed."""

from __future__ import annotations

from typing import Any

__all__ = ["optimizer_param_groups"]


def __getattr__(name: str) -> Any:
    if name == "optimizer_param_groups":
        from .param_groups import optimizer_param_groups

        globals()[name] = optimizer_param_groups
        return optimizer_param_groups
    raise AttributeError(f"module 'mta_moe.training' has no attribute {name!r}")
