"""The choices of the training keys whose machinery needs torch or DeepSpeed (loss reduction, task weighting,
gradient projection), kept apart from it so that reading a config imports neither; and the projection's check
against the DeepSpeed keys."""

from __future__ import annotations

from typing import Any, Mapping

from ..config import ConfigError

REDUCTIONS = ("token", "sequence", "task")
PROJECTIONS = ("pcgrad",)
WEIGHTING_METHODS = ("uncertainty", "validation", "gradnorm")
WEIGHTING_OPTIONS = {
    "uncertainty": {"lr": None},
    "validation": {"rate": 10.0, "max_weight": 4.0},
    "gradnorm": {"alpha": 1.5, "lr": 0.025, "parameter": None},
}


def check_projection(
    value: Any, ds: Mapping[str, Any], ep_size: int, key: str = "mta.train.gradient_projection"
) -> None:
    """Refuse settings under which the projection cannot be exact."""
    if value is None:
        return
    if value not in PROJECTIONS:
        raise ConfigError(f"{key}: must be null or one of {list(PROJECTIONS)}, got {value!r}")
    if isinstance(ds.get("fp16"), Mapping) and ds["fp16"].get("enabled"):
        raise ConfigError(
            f"{key}: per-task gradients are taken outside DeepSpeed's fp16 loss scaler and would "
            f"underflow; use bf16 or fp32 (fp16.enabled is true)"
        )
    if ep_size > 1:
        raise ConfigError(
            f"{key}: with mta.ep_size {ep_size} each rank holds only some adapters, so a rank "
            f"cannot take dot products over the whole gradient; PCGrad needs ep_size 1"
        )
