"""Add task types (or tasks, for a model that routes by task) to a trained MTA model without changing what
it computes for the old ones.

Each MTA layer's selector bias table ``β`` gains one row per new routing key; ``new_adapters`` adapters
(experts) may be added too. The old rows get ``BLOCKED`` in the new adapters' columns, so an old task
type's probability of a new adapter is exactly 0 and its top-k choice, weights and outputs are those of
the model before growing. A new row starts either Softmax-T style (``bias_init``, ``+ bias_margin`` on its
assigned adapters) or as a copy of an existing type's row (warm start) with the new adapters just above
that row's best adapter. Training then touches only the new rows (gradient mask) and the new adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ConfigError, MTAConfig
from .inject import MTAModel
from .persistence import _EXPERT_KEY, read_saved_model

BLOCKED = -1.0e4  # bias of an old task type for a new adapter: exp(BLOCKED / T) is exactly 0 in fp32/bf16
_BIAS = "deepspeed_moe.gate.task_bias"
_WG = "deepspeed_moe.gate.wg.weight"
_MIX = "always_on.mix_logits"


@dataclass
class Growth:
    """What was added: routing keys (task types, or tasks; with the key each was warm-started from) and
    adapter ids."""

    old_types: list[str]
    new_types: list[str]
    old_experts: int
    new_experts: list[int]
    warm_start: dict[str, str | None] = field(default_factory=dict)


def grown_config(
    old: MTAConfig,
    new_keys: Sequence[str],
    new_adapters: int,
    warm_start: Mapping[str, str | None],
    task_types: Sequence[str] | None = None,
) -> MTAConfig:
    """``old`` with new routing keys (task types, or tasks with ``route_by: task``) and adapters; a new key favours
    the new adapters, else its warm-start key's adapters, else all of them. ``task_types``: the grown model's
    task types when routing by task (the trained ones first)."""
    what = "task type" if old.route_by == "type" else "task"
    if old.gate_mode == "learned":
        raise ConfigError(
            f"mta.train.add_task_types: gate_mode 'learned' routes without {what}s; adding a {what} "
            "needs gate_mode 'task' or 'both'"
        )
    keys = old.routing_keys
    clash = sorted(set(new_keys) & set(keys))
    if clash or not new_keys:
        raise ConfigError(
            f"mta.{'task_types' if old.route_by == 'type' else 'tasks'}: the new {what}s must be "
            f"appended after the trained ones {keys}; got new {list(new_keys)}"
        )
    assignment = dict(zip(keys, old.assignment()))
    added = list(range(old.num_experts, old.num_experts + new_adapters))
    for name in new_keys:
        source = warm_start.get(name)
        assignment[name] = added or (assignment[source] if source else list(range(old.num_experts)))
    if old.route_by == "type":
        changes = {"task_types": [*keys, *new_keys]}
    else:
        changes = {"tasks": [*keys, *new_keys], "task_types": list(task_types or old.task_types)}
    try:
        return old.replace(**changes, num_experts=old.num_experts + new_adapters, task_adapter_assignment=assignment)
    except ConfigError as exc:
        raise ConfigError(f"mta.train.add_task_types: the grown model is invalid: {exc}") from None


def grow_state(
    state: Mapping[str, Tensor], old: MTAConfig, new: MTAConfig, warm_start: Mapping[str, str | None]
) -> dict[str, Tensor]:
    """The saved state with every selector's bias table (and W) grown for ``new``."""
    out = dict(state)
    t_old, e_old = old.num_routes, old.num_experts
    old_keys, new_keys = old.routing_keys, new.routing_keys
    for key, value in state.items():
        if key.endswith(_BIAS):
            bias = torch.full((new.num_routes, new.num_experts), BLOCKED, dtype=value.dtype)
            bias[:t_old, :e_old] = value
            for row, name in enumerate(new_keys[t_old:], start=t_old):
                source = warm_start.get(name)
                if source:
                    bias[row, :e_old] = value[old_keys.index(source)]
                    bias[row, e_old:] = value[old_keys.index(source)].max() + new.bias_margin
                else:
                    bias[row] = new.bias_init
                    bias[row, new.assignment()[row]] += new.bias_margin
            out[key] = bias
        elif key.endswith(_WG):
            out[key] = torch.cat([value, value.new_zeros(new.num_experts - e_old, value.size(1))])
        elif key.endswith(_MIX):  # always-on mixing rows: the warm-start key's, else all weights 1 (zeros)
            rows = [
                value[old_keys.index(warm_start[name])] if warm_start.get(name) else value.new_zeros(value.size(1))
                for name in new_keys[t_old:]
            ]
            out[key] = torch.cat([value, torch.stack(rows)])
    return out


def grow_saved_model(
    directory: str | Path,
    new_types: Sequence[str],
    new_adapters: int = 0,
    warm_start: Mapping[str, str | None] | None = None,
    ep_size: int | None = None,
    task_types: Sequence[str] | None = None,
) -> tuple[MTAModel, Growth]:
    """Load a saved model with routing keys (task types, or tasks with ``route_by: task``) and adapters added;
    the old keys compute exactly as before."""
    saved = read_saved_model(directory)
    warm_start = dict(warm_start or {})
    keys = saved.mta.routing_keys
    unknown = sorted(s for s in warm_start.values() if s and s not in keys)
    if unknown:
        raise ConfigError(
            f"mta.train.add_task_types.warm_start: {unknown[0]!r} is not a trained "
            f"{'task type' if saved.mta.route_by == 'type' else 'task'} {keys}"
        )
    new = grown_config(saved.mta, new_types, new_adapters, warm_start, task_types)
    if ep_size is not None:
        new = new.replace(ep_size=ep_size)
    state = grow_state(saved.state, saved.mta, new, warm_start)

    model = MTAModel.from_saved(
        saved, new, state, allow_missing=lambda m, key: _is_new_expert(m, key, saved.mta.num_experts)
    )
    growth = Growth(
        list(keys),
        list(new_types),
        saved.mta.num_experts,
        list(range(saved.mta.num_experts, new.num_experts)),
        {t: warm_start.get(t) for t in new_types},
    )
    return model, growth


def _is_new_expert(model: MTAModel, key: str, old_experts: int) -> bool:
    """Whether a (local) parameter key belongs to an adapter the growth added."""
    match = _EXPERT_KEY.match(key)
    if match is None:
        return False
    layer = model.get_submodule(match.group(1)[: -len(".deepspeed_moe.experts.deepspeed_experts.")])
    return layer.global_expert_ids()[int(match.group(2))] >= old_experts


def new_parameters(model: MTAModel, growth: Growth) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze everything but what the growth added: returns (new adapters' parameters, selector bias tables and
    always-on mixing tables). The tables train only in the new rows: a gradient hook zeroes the old rows'
    gradient."""
    for param in model.parameters():
        param.requires_grad_(False)
    experts, biases = [], []
    rows = len(growth.old_types)
    for layer in model.mta_layers.values():
        for expert, global_id in zip(layer.local_experts, layer.global_expert_ids()):
            if global_id >= growth.old_experts:
                experts += list(expert.parameters())
        biases.append(layer.selector.task_bias)
        if layer.always_on is not None:
            biases.append(layer.always_on.mix_logits)
    for param in experts + biases:
        param.requires_grad_(True)
    for bias in biases:
        mask = torch.zeros_like(bias)
        mask[rows:] = 1.0
        bias.register_hook(lambda grad, mask=mask: grad * mask.to(grad))
    return experts, biases


@torch.no_grad()
def closest_task_types(
    model: MTAModel, batches: Mapping[str, Iterable[dict[str, Tensor]]], old_types: Sequence[str]
) -> dict[str, str]:
    """For each new routing key, the trained key (task type, or task) under whose routing the model already fits
    its sequences best (lowest teacher-forced token cross-entropy on ``batches[new_key]``)."""
    was_training = model.training
    model.eval()
    choice = {}
    for name, rows in batches.items():
        rows = list(rows)
        losses = []
        for type_id in range(len(old_types)):
            total, count = 0.0, 0
            for batch in rows:
                ids = torch.full_like(batch["task_type_ids"], type_id)
                out = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    task_type_ids=ids,
                    task_ids=ids,
                )
                logits, labels = out.logits, batch["labels"]
                if not model.config.is_encoder_decoder:
                    logits, labels = logits[:, :-1], labels[:, 1:]
                loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum")
                total += float(loss)
                count += int((labels != -100).sum())
            losses.append(total / max(count, 1))
        choice[name] = old_types[min(range(len(losses)), key=losses.__getitem__)]
    model.train(was_training)
    return choice
