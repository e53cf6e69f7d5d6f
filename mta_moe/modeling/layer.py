"""The MTA layer: task adapters as the experts of a DeepSpeed MoE layer, routed per sequence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from deepspeed.moe.layer import MoE
from deepspeed.utils import groups
from torch import Tensor, nn

from ..config import ConfigError, MTAConfig
from .adapters import BottleneckAdapter, expert_generator, make_expert_template
from .always_on import AlwaysOnAdapters
from .dispatch import grouped_dispatch
from .gate import SequenceRouting, TaskWeightSelector, sequence_representation
from .routing_stats import RoutingSnapshot, RoutingStatistics
from .shared import GateNetwork, build_shared_adapters, mix_with_shared

# Parameter-name fragments of each MTA component (used for freezing, param groups and accounting).
COMPONENT_PATTERNS = {
    "adapters": ".deepspeed_moe.experts.",
    "selector": ".deepspeed_moe.gate.",
    "always_on": ".always_on.",
    "shared_adapters": ".shared_adapters.",
    "gate_network": ".gate_network.",
    "base_ffn": ".base_ffn.",
    "task_heads": ".task_heads.",  # an encoder's per-task classifiers (MTAModel.task_heads)
}
# ids reserved for the shared adapters / gate network and the always-on adapters in the per-layer init seeds
_SHARED_SEED_OFFSET = 1_000
_ALWAYS_ON_SEED_OFFSET = 2_000


@dataclass
class LayerRouting:
    """Everything a layer decided for a batch, reusable for later decoding steps of the same sequences."""

    selection: SequenceRouting
    mix_weights: Tensor | None = None  # [B, 1+S] stage-2 mixing weights


class MTALayer(MoE):
    """Mixture-of-Task-Adapters layer; replaces a transformer FFN sub-layer.

    ``bottleneck`` experts: ``y = FFN(x) + Σ_e w_e · A_e(x)`` (FFN kept as ``base_ffn``).
    ``ffn`` experts: ``y = Σ_e w_e · FFN_e(x)``, each ``FFN_e`` a copy of the given FFN.
    Always-on adapters (``mta.always_on_adapters``) add ``Σ_j w_j A_j(x)`` beside the task mixture, mixed per
    routing key (:mod:`.always_on`).
    Both compute exactly ``FFN(x)`` at initialisation. Stage 2 (:meth:`enable_stage2`) adds shared
    adapters and a gate network. ``forward`` returns ``(output, l_aux, exp_counts)`` like ``MoE``.

    Args:
        config: the layer's settings.
        hidden_size: the model width d.
        ffn: the FFN sub-layer it extends (``bottleneck``) or copies (``ffn``).
        layer_id: the layer's position (seeds its adapters' initialisation).
    """

    def __init__(self, config: MTAConfig, hidden_size: int, ffn: nn.Module, layer_id: int = 0) -> None:
        if ffn is None:
            raise ValueError("MTALayer needs the FFN module it extends (bottleneck) or copies (ffn)")
        template = make_expert_template(
            config.expert_kind, hidden_size, config.adapter_dim, config.adapter_activation, ffn, config.adapter_bias
        )
        super().__init__(
            hidden_size,
            template,
            num_experts=config.num_experts,
            ep_size=config.ep_size,
            k=1,
            capacity_factor=1.0,
            eval_capacity_factor=1.0,
            min_capacity=0,
            drop_tokens=False,
            use_rts=False,
        )
        self.config = config
        self.hidden_size = hidden_size
        self.layer_id = layer_id
        self.stage = 1
        # the stock token-level TopKGate is replaced before deepspeed.initialize sets its ep group
        self.deepspeed_moe.gate = TaskWeightSelector(config, hidden_size)
        self.base_ffn = ffn if config.expert_kind == "bottleneck" else None
        self._ep_rank = _expected_ep_rank(config.ep_size)
        self._init_local_experts()
        self.always_on: AlwaysOnAdapters | None = None
        if config.always_on_adapters:
            self.always_on = AlwaysOnAdapters(
                hidden_size,
                config.always_on_adapters,
                config.always_on_dim or config.adapter_dim,
                config.adapter_activation,
                config.adapter_bias,
                1 if config.gate_mode == "learned" else config.num_routes,
                expert_generator(config.init_seed, layer_id, _ALWAYS_ON_SEED_OFFSET),
            )
        self.shared_adapters: nn.ModuleList | None = None
        self.gate_network: GateNetwork | None = None
        self.routing_stats = RoutingStatistics(config.routing_keys, config.num_experts)
        self.last_routing: LayerRouting | None = None
        # which computation runs the adapters at ep_size 1 (overrides mta.dispatch): None = as configured
        # ('grouped' chooses per call, dispatch.choose_form), or one of dispatch.FORMS
        self.dispatch_form: str | None = None

    # ------------------------------------------------------------------ setup
    @property
    def selector(self) -> TaskWeightSelector:
        return self.deepspeed_moe.gate

    @property
    def local_experts(self) -> nn.ModuleList:
        return self.deepspeed_moe.experts.deepspeed_experts

    def global_expert_ids(self) -> list[int]:
        """Global ids of the experts this rank holds (DeepSpeed's layout: ep rank × local count + local id)."""
        return [self._ep_rank * self.num_local_experts + i for i in range(self.num_local_experts)]

    def _init_local_experts(self) -> None:
        if self.config.expert_kind != "bottleneck":
            return  # ffn experts are all copies of the pretrained FFN
        for expert, global_id in zip(self.local_experts, self.global_expert_ids()):
            assert isinstance(expert, BottleneckAdapter)
            expert.reset_parameters(expert_generator(self.config.init_seed, self.layer_id, global_id))

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        super().set_deepspeed_parallelism(use_data_before_expert_parallel_)
        actual = groups._get_expert_parallel_rank(self.expert_group_name)
        if actual != self._ep_rank:
            raise RuntimeError(
                f"MTA layer {self.layer_id}: initialised experts for ep rank {self._ep_rank} but "
                f"DeepSpeed placed this process at ep rank {actual} (use_data_before_expert_parallel "
                "is not supported)"
            )

    def enable_stage2(self) -> None:
        """Add the shared adapters and gate network; the layer's output is unchanged at this moment."""
        if self.stage == 2:
            return
        cfg = self.config
        ref = next(self.selector.parameters())
        if cfg.num_shared_adapters > 0:
            gen = expert_generator(cfg.init_seed, self.layer_id, _SHARED_SEED_OFFSET)
            self.shared_adapters = build_shared_adapters(
                self.hidden_size,
                cfg.num_shared_adapters,
                cfg.shared_adapter_dim,
                cfg.adapter_activation,
                gen,
                cfg.adapter_bias,
            )
            self.gate_network = GateNetwork(
                self.hidden_size, 1 + cfg.num_shared_adapters, cfg.gate_network_hidden or self.hidden_size
            )
            self.gate_network.reset_parameters(gen)
            dtype = self._compute_dtype()
            self.shared_adapters.to(device=ref.device, dtype=dtype)
            self.gate_network.to(device=ref.device, dtype=dtype)
        self.stage = 2

    def _compute_dtype(self) -> torch.dtype:
        expert_param = next(self.local_experts.parameters())
        return expert_param.dtype

    # ---------------------------------------------------------------- forward
    def route(
        self,
        hidden_states: Tensor,
        route_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        ids_checked: bool = False,
    ) -> SequenceRouting:
        """The per-sequence adapter choice for ``hidden_states`` [B, L, d]."""
        seq_repr = sequence_representation(hidden_states, attention_mask, self.config.sequence_repr)
        return self.selector.route(seq_repr, route_ids, ids_checked)

    def forward(
        self,
        hidden_states: Tensor,
        route_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        routing: LayerRouting | None = None,
        track: bool = True,
        ids_checked: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        """``hidden_states`` [B, L, d] → ``(output, l_aux, exp_counts)``; ``route_ids`` are one routing-key id per
        sequence (task-type ids, or task ids with ``route_by: task``); ``routing`` reuses an earlier decision;
        ``track=False`` leaves the routing statistics alone (a recomputation of a forward already counted);
        ``ids_checked``: the ids' range was checked once for the whole model, not again here.

        Returns:
            ``(output [B, L, d], l_aux (scalar aux loss), exp_counts [num_experts] sequences per adapter)``.
        """
        if hidden_states.dim() != 3:
            raise ValueError(f"MTALayer expects [batch, seq_len, hidden], got shape {tuple(hidden_states.shape)}")
        selection = (
            routing.selection
            if routing is not None
            else self.route(hidden_states, route_ids, attention_mask, ids_checked)
        )
        out = self._dispatch(hidden_states, selection)
        if self.always_on is not None:
            out = self.always_on(hidden_states, out, selection.route_ids)
        base = None
        if self.base_ffn is not None:
            base = self.base_ffn(hidden_states)
            base = base[0] if isinstance(base, tuple) else base
            out = base + out
        mix = None
        if self.stage == 2 and self.shared_adapters is not None:
            official = self.config.stage2_form == "official"
            out, mix = mix_with_shared(
                hidden_states,
                out,
                self.shared_adapters,
                self.gate_network,
                attention_mask,
                self.config.sequence_repr,
                None if routing is None else routing.mix_weights,
                base_out=base if official else None,
            )
        self.last_routing = LayerRouting(selection.detach(), None if mix is None else mix.detach())
        if self.config.track_routing and track:
            self.routing_stats.update(selection, mix)
        return out, self.deepspeed_moe.l_aux, self.deepspeed_moe.exp_counts

    def _dispatch(self, hidden_states: Tensor, selection: SequenceRouting) -> Tensor:
        """The adapter mixture ``Σ_j w_j · A_j(x)`` (experts only) through the configured dispatch."""
        if self.config.dispatch == "deepspeed":
            return self.deepspeed_moe(hidden_states, selection)
        moe = self.deepspeed_moe
        if self.ep_size > 1 and moe.ep_group is None:
            raise RuntimeError(
                f"MTA layer {self.layer_id}: ep_size={self.ep_size} has no expert-parallel group yet; "
                "wrap the model with deepspeed.initialize before the forward"
            )
        form = self.dispatch_form
        if form is None and self.config.dispatch != "grouped":
            form = self.config.dispatch
        out, counts = grouped_dispatch(
            hidden_states, selection, self.local_experts, self.num_experts, self.ep_size, moe.ep_group, form
        )
        moe.l_aux, moe.exp_counts = selection.aux_loss, counts.detach()
        return out

    # ------------------------------------------------------------ statistics
    def get_routing_stats(self, all_reduce: bool = False, group=None) -> RoutingSnapshot:
        """Accumulated routing statistics; ``all_reduce`` sums them over ``group`` (default: all ranks)."""
        return self.routing_stats.snapshot(all_reduce=all_reduce, group=group)

    def reset_routing_stats(self) -> None:
        self.routing_stats.reset()

    # ------------------------------------------------------------ components
    def named_component_parameters(self, prefix: str = "") -> Iterator[tuple[str, str, nn.Parameter]]:
        """Yield ``(component, name, param)``; components are the keys of :data:`COMPONENT_PATTERNS`."""
        for name, param in self.named_parameters(prefix=prefix):
            yield component_of(name), name, param

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"kind={c.expert_kind}, experts={c.num_experts} (local {self.num_local_experts}), k={c.top_k}, "
            f"mode={c.gate_mode}, T={c.temperature}, stage={self.stage}"
        )


def component_of(param_name: str) -> str:
    """MTA component a parameter name (as from ``named_parameters``) belongs to, or ``backbone``."""
    dotted = "." + param_name
    for component, fragment in COMPONENT_PATTERNS.items():
        if fragment in dotted:
            return "backbone" if component == "base_ffn" else component
    return "backbone"


def _expected_ep_rank(ep_size: int) -> int:
    """This process's rank in its expert-parallel group under DeepSpeed's contiguous layout."""
    if ep_size == 1:
        return 0
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            f"mta.ep_size={ep_size} needs an initialised process group (launch with deepspeed or "
            "torchrun and call deepspeed.init_distributed() first); use ep_size=1 in a single process"
        )
    world = dist.get_world_size()
    if world % ep_size != 0:
        raise ConfigError(f"mta.ep_size={ep_size}: the world size ({world}) must be divisible by ep_size")
    return dist.get_rank() % ep_size
