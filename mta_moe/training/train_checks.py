"""The checks of the training keys whose machinery needs torch or DeepSpeed (loss reduction, task weighting,
gradient projection, gradual unfreezing), kept apart from it so that reading a config imports neither."""
from __future__ import annotations

from typing import Any, Mapping

from ..config import ConfigError, check_int

REDUCTIONS = ("token", "sequence", "task")
PROJECTIONS = ("pcgrad",)
WEIGHTING_METHODS = ("uncertainty", "validation", "gradnorm")
WEIGHTING_OPTIONS = {"uncertainty": {"lr": None}, "validation": {"rate": 10.0, "max_weight": 4.0},
                     "gradnorm": {"alpha": 1.5, "lr": 0.025, "parameter": None}}


def check_projection(value: Any, ds: Mapping[str, Any], ep_size: int,
                     key: str = "mta.train.gradient_projection") -> None:
    """Refuse settings under which the projection cannot be exact."""
    if value is None:
        return
    if value not in PROJECTIONS:
        raise ConfigError(f"{key}: must be null or one of {list(PROJECTIONS)}, got {value!r}")
    if isinstance(ds.get("fp16"), Mapping) and ds["fp16"].get("enabled"):
        raise ConfigError(f"{key}: per-task gradients are taken outside DeepSpeed's fp16 loss scaler and would "
                          f"underflow; use bf16 or fp32 (fp16.enabled is true)")
    if ep_size > 1:
        raise ConfigError(f"{key}: with mta.ep_size {ep_size} each rank holds only some adapters, so a rank "
                          f"cannot take dot products over the whole gradient; PCGrad needs ep_size 1")


def check_unfreeze(value: Any, stage: int, trainable: Any, key: str = "mta.train.unfreeze") -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or set(value) - {"start_step", "every"} or "every" not in value:
        raise ConfigError(f"{key}: must be null or {{\"start_step\": int, \"every\": int}}, got {value!r}")
    check_int(value["every"], f"{key}.every", 1)
    check_int(value.get("start_step", 0), f"{key}.start_step", 0)
    if stage != 1:
        raise ConfigError(f"{key}: stage 2 keeps the backbone frozen; gradual unfreezing is a stage-1 schedule")
    if trainable is not None:
        raise ConfigError(f"{key}: cannot be combined with mta.train.trainable (which fixes what trains)")


def check_weighting(value: Any, reduction: str, key: str = "mta.train.weighting") -> None:
    """Validate ``mta.train.weighting`` (null or ``{"method": ..., options}``)."""
    if value is None:
        return
    if not isinstance(value, Mapping) or value.get("method") not in WEIGHTING_METHODS:
        raise ConfigError(f"{key}: must be null or {{\"method\": one of {list(WEIGHTING_METHODS)}, ...}}, "
                          f"got {value!r}")
    method = value["method"]
    unknown = sorted(set(value) - {"method", *WEIGHTING_OPTIONS[method]})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not an option of {method!r}; "
                          f"options: {sorted(WEIGHTING_OPTIONS[method])}")
    for name, option in value.items():
        if name in ("method", "parameter"):
            continue
        if not isinstance(option, (int, float)) or isinstance(option, bool) or option <= 0:
            raise ConfigError(f"{key}.{name}: must be a number > 0, got {option!r}")
    if method == "validation" and value.get("max_weight", 4.0) < 1:
        raise ConfigError(f"{key}.max_weight: must be >= 1, got {value['max_weight']!r}")
    if "parameter" in value and value["parameter"] is not None and not isinstance(value["parameter"], str):
        raise ConfigError(f"{key}.parameter: must be a parameter-name glob, got {value['parameter']!r}")
    if method == "uncertainty" and reduction != "task":
        raise ConfigError(f"{key}: uncertainty weighting is defined on per-task losses; set "
                          f"mta.train.loss_reduction to 'task' (it is {reduction!r})")
