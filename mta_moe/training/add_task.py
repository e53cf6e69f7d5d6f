"""``mta.train.add_task_types``: extend a trained export with the task types of ``mta.task_types`` it lacks
(or, for a model that routes by task, with the data's tasks it lacks), choose each new routing key's warm
start, and train only the new adapters and bias rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

from ..config import ConfigError
from ..modeling import MTAModel
from ..modeling.grow import Growth, closest_task_types, grow_saved_model, new_parameters

CLOSEST_SAMPLE = 64  # training rows per new type used to pick the closest trained type


def new_task_types(trained: Sequence[str], configured: Sequence[str]) -> list[str]:
    """The configured task types after the trained ones (which must come first, in order)."""
    if list(configured[: len(trained)]) != list(trained) or len(configured) == len(trained):
        raise ConfigError(
            f"mta.task_types: list the trained types {list(trained)} first, then the new ones; got {list(configured)}"
        )
    return list(configured[len(trained) :])


def grow_for_training(
    source: Path,
    task_types: Sequence[str],
    spec: Mapping[str, Any],
    ep_size: int,
    rows_by_type: Mapping[str, list[dict]],
    collate: Callable,
    log: Callable[[str], None],
    trained: MTAModel | None = None,
    new_keys: Sequence[str] | None = None,
) -> tuple[MTAModel, Growth]:
    """The grown model for this run. ``rows_by_type``: tokenized training rows of each new routing key (for the
    ``closest`` warm start, which compares the trained keys' routing on them). ``new_keys``: the new tasks of a
    model that routes by task (default: the new task types of ``task_types``)."""
    trained = trained if trained is not None else MTAModel.from_pretrained(source)
    by_task = trained.mta_config.route_by == "task"
    new = list(new_keys) if by_task else new_task_types(trained.mta_config.task_types, task_types)
    if by_task and list(task_types[: len(trained.mta_config.task_types)]) != trained.mta_config.task_types:
        raise ConfigError(
            f"mta.task_types: list the trained types {trained.mta_config.task_types} first, then "
            f"any new ones; got {list(task_types)}"
        )
    missing = [t for t in new if not rows_by_type.get(t)]
    if missing:
        raise ConfigError(
            f"mta.task_types: no training rows have the new type {missing[0]!r} (set it with "
            f"mta.data.type_overrides or the data's type column)"
        )
    warm = spec.get("warm_start", "closest")
    if warm == "closest":
        batches = {
            t: [collate(rows[i : i + 16]) for i in range(0, min(len(rows), CLOSEST_SAMPLE), 16)]
            for t, rows in rows_by_type.items()
            if t in new
        }
        choice: dict[str, str | None] = dict(closest_task_types(trained, batches, trained.mta_config.routing_keys))
    else:
        choice = {t: warm for t in new}
    model, growth = grow_saved_model(
        source, new, int(spec.get("new_adapters", 1)), choice, ep_size=ep_size, task_types=task_types
    )
    log(
        f"added {'tasks' if by_task else 'task types'} {new} with adapters {growth.new_experts} to {source}; "
        f"warm start: {growth.warm_start}"
    )
    return model, growth


def growth_param_groups(model: MTAModel, growth: Growth, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups over what the growth added; the bias tables without weight decay (their old rows
    get zero gradient, and with zero decay Adam leaves them exactly unchanged)."""
    experts, biases = new_parameters(model, growth)
    groups = [{"params": biases, "name": "new_task_bias", "lr": lr, "weight_decay": 0.0}]
    if experts:
        adapters = {"params": experts, "name": "new_adapters", "lr": lr, "weight_decay": weight_decay}
        groups += [g for g in split_params_into_different_moe_groups_for_optimizer(adapters) if g["params"]]
    return groups
