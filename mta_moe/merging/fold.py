"""Fold one task's fixed adapter mixture into the backbone: a stock ``transformers`` model, exact for that task.

With ``gate_mode: task`` the selector's choice for a routing key (a task type, or a task with ``route_by: task``)
is a constant: adapters ``e`` with weights ``w_e``. A ``bottleneck`` layer then computes
``FFN(x) + Σ_e w_e (U_e act(D_e x + d_e) + u_e)``; when ``act`` is the FFN's own activation and the FFN is not
gated, that is the FFN with ``Σ r_e`` more hidden units (the ``D_e`` rows appended to its input projection, the
``w_e U_e`` columns to its output projection, ``Σ w_e u_e`` added to its output bias). An ``ffn`` layer
``Σ_e w_e FFN_e(x)`` is one FFN of ``k · d_ff`` units (gated ones too). Blocks narrower than the widest of their
stack are padded with units that contribute exactly zero, because a config holds one FFN width per stack.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..modeling.backbones import find_stack
from ..modeling.inject import MTAModel
from ..modeling.layer import MTALayer
from .ffn_weights import ACTIVATION_KEYS, SAME_ACTIVATION, WIDTH_KEYS, FFNWeights, read_ffn, write_ffn


class MergeError(ValueError):
    """The model cannot be folded exactly into a stock model; the message says why and what would allow it."""


@dataclass
class FoldedLayer:
    """What one MTA layer contributed for the exported routing key."""

    adapters: list[int]
    weights: list[float]  # per adapter, then per always-on adapter (mta.always_on_adapters)
    width: int  # hidden units of the folded FFN before padding


@dataclass
class FoldResult:
    """A stock model equal to the MTA model for one routing key, and how it was built."""

    model: nn.Module
    route_by: str
    key: str
    layers: dict[str, FoldedLayer] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)  # config key -> FFN width of the stock model


def routing_key_id(model: MTAModel, task: str | None = None, task_type: str | None = None) -> tuple[str, int]:
    """(routing key, its id) for ``task`` (models routed by task) or ``task_type`` (routed by type)."""
    cfg = model.mta_config
    if (task is None) == (task_type is None):
        raise MergeError("name exactly one of a task or a task type to export")
    wanted, given, other = ("task", task, "task type") if cfg.route_by == "task" else ("type", task_type, "task")
    if given is None:
        raise MergeError(
            f"this model routes by {wanted} (mta.route_by {cfg.route_by!r}): name a {wanted}, not a "
            f"{other}; its {wanted}s are {cfg.routing_keys}"
        )
    if given not in cfg.routing_keys:
        raise MergeError(f"{wanted} {given!r} is not one of the model's {wanted}s {cfg.routing_keys}")
    return given, cfg.routing_keys.index(given)


def check_foldable(model: MTAModel, check_ranks: bool = True) -> None:
    """Refuse, naming the setting, a model with no exact per-task fold: a mixture that depends on the input, adapters
    spread over ranks (unless ``check_ranks`` is False: its ep-1 export will fold), or adapters that cannot become
    units of the backbone's FFN."""
    cfg = model.mta_config
    if cfg.gate_mode != "task":
        raise MergeError(
            f"mta.gate_mode is {cfg.gate_mode!r}: the adapter weights depend on each input, so no fixed "
            "per-task model equals it; only gate_mode 'task' folds exactly"
        )
    activation = getattr(model.base_model.config, ACTIVATION_KEYS[model.family.name])
    for key, layer in model.mta_layers.items():
        if layer.shared_adapters is not None:
            raise MergeError(
                f"layer {key} is a stage-2 layer with shared adapters: their gate network weighs them "
                "per input sequence, so no fixed per-task model equals it; export the stage-1 model"
            )
        if check_ranks and layer.ep_size > 1:
            raise MergeError(
                f"layer {key} holds its adapters over {layer.ep_size} ranks; load the export with ep_size 1 to merge it"
            )
        if cfg.expert_kind == "bottleneck":
            _check_bottleneck_fold(layer, read_ffn(layer.base_ffn), activation)


def _check_bottleneck_fold(layer: MTALayer, base: FFNWeights, activation: str) -> None:
    cfg = layer.config
    if base.gated:
        raise MergeError(
            f"layer {layer.layer_id}: the backbone's FFN is gated (act(W_0 x) * W_1 x), so bottleneck "
            "adapters cannot become extra units of it; use expert_kind 'ffn' for exact per-task exports"
        )
    if activation not in SAME_ACTIVATION[cfg.adapter_activation]:
        raise MergeError(
            f"mta.adapter_activation is {cfg.adapter_activation!r} but the backbone's FFN uses "
            f"{activation!r}: the adapters fold into the FFN only with the same activation"
        )
    if cfg.adapter_bias and (base.input_biases[0] is None or base.output_bias is None):
        raise MergeError(
            "the backbone's FFN has no bias vectors (T5) but the adapters do: train with "
            "mta.adapter_bias false for an exact per-task export"
        )


@torch.no_grad()
def route_of(layer: MTALayer, route_id: int) -> tuple[list[int], list[float]]:
    """The adapters and weights the layer's selector gives routing key ``route_id`` (gate_mode 'task')."""
    ref = next(layer.selector.parameters())
    seq = torch.zeros(1, layer.hidden_size, device=ref.device)  # unused by a task-only gate
    routing = layer.selector.route(seq, torch.tensor([route_id], device=ref.device))
    return routing.indices[0].tolist(), routing.weights[0].tolist()


def fold_layer(layer: MTALayer, route_id: int) -> tuple[FFNWeights, FoldedLayer]:
    """The FFN weights equal to ``layer`` for routing key ``route_id``, for a model :func:`check_foldable` passed.
    Always-on adapters fold like task adapters, with the key's mixing weights (the task mixture's scales its
    adapters')."""
    adapters, weights = route_of(layer, route_id)
    experts = [layer.local_experts[i] for i in adapters]
    if layer.always_on is not None:
        mix = layer.always_on.key_weights()[route_id].tolist()
        weights = [mix[0] * w for w in weights] + mix[1:]
        experts += list(layer.always_on.adapters)
    if layer.config.expert_kind == "ffn":
        folded = _fold_ffn_experts([read_ffn(e) for e in experts], weights)
    else:
        folded = _fold_bottlenecks(layer, read_ffn(layer.base_ffn), experts, weights)
    return folded, FoldedLayer(adapters, weights, folded.width)


def _fold_ffn_experts(ffns: list[FFNWeights], weights: list[float]) -> FFNWeights:
    inputs = [torch.cat([f.inputs[i] for f in ffns]) for i in range(len(ffns[0].inputs))]
    biases = []
    for i in range(len(ffns[0].inputs)):
        parts = [f.input_biases[i] for f in ffns]
        biases.append(None if parts[0] is None else torch.cat(parts))
    output = torch.cat([w * f.output for f, w in zip(ffns, weights)], dim=1)
    out_bias = None if ffns[0].output_bias is None else sum(w * f.output_bias for f, w in zip(ffns, weights))
    return FFNWeights(inputs, biases, output, out_bias)


def _fold_bottlenecks(layer: MTALayer, base: FFNWeights, experts: list[nn.Module], weights: list[float]) -> FFNWeights:
    has_bias = layer.config.adapter_bias
    down = torch.cat([e.down.weight.detach() for e in experts])
    down_bias = torch.cat([e.down.bias.detach() for e in experts]) if has_bias else None
    up = torch.cat([w * e.up.weight.detach() for e, w in zip(experts, weights)], dim=1)
    folded = base.widened([down], [down_bias], up)
    if has_bias:
        folded.output_bias = base.output_bias + sum(w * e.up.bias.detach() for e, w in zip(experts, weights))
    return folded


def fold_task(model: MTAModel, task: str | None = None, task_type: str | None = None) -> FoldResult:
    """A stock ``transformers`` model (the backbone's class) computing what ``model`` computes for one task
    (``task``, routed by task) or task type (``task_type``, routed by type); raises :class:`MergeError` where no
    exact fold exists."""
    check_foldable(model)
    key, route_id = routing_key_id(model, task, task_type)
    family, base = model.family, model.base_model
    ffns: dict[tuple[str, int], FFNWeights] = {}
    layers: dict[str, FoldedLayer] = {}
    for stack, path in family.stacks.items():
        _, blocks = find_stack(base, path)
        for idx, block in enumerate(blocks):
            layer = model.mta_layers.get(f"{stack}.{idx}")
            if layer is None:
                ffns[stack, idx] = read_ffn(family.get_ffn(block))
            else:
                ffns[stack, idx], layers[f"{stack}.{idx}"] = fold_layer(layer, route_id)
    widths: dict[str, int] = {}
    for stack, width_key in WIDTH_KEYS[family.name].items():  # T5 keeps one d_ff for both stacks
        widest = max(w.width for (s, _), w in ffns.items() if s == stack)
        widths[width_key] = max(widths.get(width_key, 0), widest)
    return FoldResult(_stock_model(model, ffns, widths), model.mta_config.route_by, key, layers, widths)


def _stock_model(model: MTAModel, ffns: dict[tuple[str, int], FFNWeights], widths: dict[str, int]) -> nn.Module:
    base = model.base_model
    config = copy.deepcopy(base.config)
    for width_key, width in widths.items():
        setattr(config, width_key, width)
    ref = next(base.parameters())
    plain = type(base)(config).to(device=ref.device, dtype=ref.dtype).eval()
    written: set[int] = set()
    for stack, path in model.family.stacks.items():
        _, blocks = find_stack(plain, path)
        for idx, block in enumerate(blocks):
            ffn = ffns[stack, idx].padded(widths[WIDTH_KEYS[model.family.name][stack]])
            written.update(id(p) for p in write_ffn(model.family.get_ffn(block), ffn))
    ffn_names = {n for n, p in plain.named_parameters(remove_duplicate=False) if id(p) in written}
    source = base.state_dict()
    with torch.no_grad():
        for name, tensor in plain.state_dict().items():
            if name in ffn_names:
                continue
            if name not in source or source[name].shape != tensor.shape:
                raise MergeError(f"{name}: no tensor of shape {tuple(tensor.shape)} in the MTA model's backbone")
            tensor.copy_(source[name])
    return plain
