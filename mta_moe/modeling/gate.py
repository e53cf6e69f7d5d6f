"""Task Weight Selector: a per-sequence, task-biased top-k gate in DeepSpeed's ``TopKGate`` contract."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from deepspeed import comm as ds_comm
from deepspeed.comm import pg_utils
from deepspeed.moe.sharded_moe import TopKGate
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import MTAConfig


@dataclass
class SequenceRouting:
    """Routing decision of one MTA layer for a batch of sequences (one row per sequence)."""

    indices: Tensor  # [B, k] int64: selected adapters, best first
    weights: Tensor  # [B, k] fp32: renormalised weights of the selected adapters (sum to 1)
    probs: Tensor  # [B, E] fp32: softmax(logits / T) before top-k
    route_ids: Tensor | None  # [B] int64 routing-key ids (task types or tasks), None for a learned-only gate
    aux_loss: Tensor  # scalar fp32: load-balancing + z-loss terms (0 when both coefficients are 0)

    def detach(self) -> "SequenceRouting":
        tt = None if self.route_ids is None else self.route_ids.detach()
        return SequenceRouting(
            self.indices.detach(),
            self.weights.detach(),
            self.probs.detach(),
            tt,
            torch.zeros_like(self.aux_loss.detach()),
        )

    def dense_weights(self) -> Tensor:
        """[B, E] weights with zeros on the adapters a sequence does not use."""
        out = torch.zeros_like(self.probs)
        return out.scatter(1, self.indices, self.weights)


def sequence_representation(hidden_states: Tensor, attention_mask: Tensor | None, mode: str) -> Tensor:
    """[B, L, d] -> [B, d]: the first attended position's state (``first``) or the masked mean (``mean``)."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be [batch, seq_len, hidden], got shape {tuple(hidden_states.shape)}")
    if attention_mask is not None and attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask must be [batch, seq_len] = {tuple(hidden_states.shape[:2])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if mode == "first":
        if attention_mask is None:
            return hidden_states[:, 0]
        # first attended position, so left padding does not make the gate read a pad token
        first = attention_mask.ne(0).int().argmax(dim=1)
        return hidden_states[torch.arange(hidden_states.size(0), device=hidden_states.device), first]
    if mode == "mean":
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        mask = attention_mask.ne(0).to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ValueError(f"mta.sequence_repr: must be one of ['first', 'mean'], got {mode!r}")


class TaskWeightSelector(TopKGate):
    """Per-sequence gate: logits ``W·r + β[key]``, probabilities ``softmax(logits / T)``, top-k.

    ``key`` is the sequence's routing key: its task type, or its task with ``mta.route_by: task``.
    ``route`` makes the per-sequence decision; ``forward`` (called by DeepSpeed's ``MOELayer``
    with the decision as its second argument) expands it to every token of each sequence and
    returns DeepSpeed 0.19.8's sparse-route 7-tuple. Capacity is the largest expert load,
    maximised over the expert-parallel group, so no token is ever dropped.
    """

    def __init__(self, config: MTAConfig, hidden_size: int) -> None:
        super().__init__(
            hidden_size,
            config.num_experts,
            k=config.top_k,
            capacity_factor=1.0,
            eval_capacity_factor=1.0,
            min_capacity=0,
            noisy_gate_policy=None,
            drop_tokens=False,
            use_rts=False,
        )
        self.num_experts = config.num_experts
        self.route_by = config.route_by
        self.routing_keys = config.routing_keys
        self.num_routes = len(self.routing_keys)
        self.gate_mode = config.gate_mode
        self.temperature = float(config.temperature)
        self.load_balance_coef = float(config.load_balance_coef)
        self.z_loss_coef = float(config.z_loss_coef)
        self.task_bias = nn.Parameter(softmax_t_bias(config))
        with torch.no_grad():
            if config.selector_init_std > 0:
                self.wg.weight.normal_(0.0, config.selector_init_std)
            else:
                self.wg.weight.zero_()
        self.set_trainable(True)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Terms the gate mode does not use (W in 'task', β in 'learned'): never trained."""
        return [
            p
            for p, unused in ((self.wg.weight, self.gate_mode == "task"), (self.task_bias, self.gate_mode == "learned"))
            if unused
        ]

    def set_trainable(self, trainable: bool) -> None:
        """(Un)freeze the selector; a term its mode does not use (W in 'task', β in 'learned') stays frozen."""
        self.wg.weight.requires_grad_(trainable and self.gate_mode != "task")
        self.task_bias.requires_grad_(trainable and self.gate_mode != "learned")

    # ------------------------------------------------------------------ routing
    def route(self, seq_repr: Tensor, route_ids: Tensor | None, ids_checked: bool = False) -> SequenceRouting:
        """Choose adapters and weights for each sequence from its representation and routing key.

        ``ids_checked``: the caller already checked the ids' range (:func:`check_route_id_range`), so this
        layer does not read them back to the host (a synchronisation per layer on a GPU)."""
        batch = seq_repr.size(0)
        route_ids = self._check_route_ids(route_ids, batch, seq_repr.device, ids_checked)
        logits = seq_repr.new_zeros(batch, self.num_experts, dtype=torch.float32)
        if self.gate_mode != "task":
            logits = logits + F.linear(seq_repr.float(), self.wg.weight.float())
        if self.gate_mode != "learned":
            logits = logits + self.task_bias.float()[route_ids]
        scaled = logits / self.temperature
        probs = F.softmax(scaled, dim=-1)
        top_idx = torch.topk(probs, k=self.k, dim=-1).indices
        # renormalised top-k weights p_i / Σ_sel p_j == softmax over the selected logits: written this
        # way, unselected logits get exactly no gradient (no cancellation through the full softmax)
        weights = F.softmax(scaled.gather(1, top_idx), dim=-1)
        aux = self._aux_loss(scaled, probs, top_idx)
        return SequenceRouting(top_idx, weights, probs, route_ids, aux)

    def _check_route_ids(
        self, route_ids: Tensor | None, batch: int, device: torch.device, ids_checked: bool
    ) -> Tensor | None:
        name = "task_type_ids" if self.route_by == "type" else "task_ids"
        if route_ids is None:
            if self.gate_mode == "learned":
                return None
            raise ValueError(
                f"{name}: required when mta.gate_mode is {self.gate_mode!r} "
                "(use gate_mode 'learned' to route without task ids)"
            )
        route_ids = torch.as_tensor(route_ids, device=device).long().reshape(-1)
        if route_ids.numel() != batch:
            raise ValueError(f"{name}: need one id per sequence ({batch}), got {route_ids.numel()}")
        if not ids_checked and not torch.compiler.is_compiling():
            check_route_id_range(route_ids, self.route_by, self.routing_keys)
        return route_ids

    def _aux_loss(self, scaled_logits: Tensor, probs: Tensor, top_idx: Tensor) -> Tensor:
        aux = probs.new_zeros(())
        if self.load_balance_coef > 0:
            # Switch-style balance over sequences: E * sum_e (share of routes to e) * (mean prob of e)
            routes = torch.zeros_like(probs).scatter(1, top_idx, 1.0)
            share = routes.mean(0) / self.k
            aux = aux + self.load_balance_coef * self.num_experts * (share * probs.mean(0)).sum()
        if self.z_loss_coef > 0:
            aux = aux + self.z_loss_coef * torch.logsumexp(scaled_logits, dim=-1).pow(2).mean()
        return aux

    # ----------------------------------------------------------- DeepSpeed path
    def forward(
        self,
        input: Tensor,
        used_token: SequenceRouting | None = None,
        sparse_routes: bool = True,
        use_tutel: bool = False,
    ):  # type: ignore[override]
        if not isinstance(used_token, SequenceRouting):
            raise TypeError(
                "TaskWeightSelector routes whole sequences: call MTALayer, which passes the "
                "per-sequence routing, rather than the gate or MOELayer directly"
            )
        if not sparse_routes or use_tutel:
            raise ValueError(
                "TaskWeightSelector returns sparse routes only (DeepSpeed 0.19.8 index dispatch, no Tutel)"
            )
        return expand_to_tokens(used_token, input.size(0), self.num_experts, self.ep_group)


def check_route_id_range(route_ids: Tensor, route_by: str, routing_keys: list[str]) -> None:
    """Refuse routing-key ids outside ``[0, len(routing_keys))``, naming the first bad one (reads them on the host)."""
    name, keys = ("task_type_ids", "task_types") if route_by == "type" else ("task_ids", "tasks")
    bad = route_ids[(route_ids < 0) | (route_ids >= len(routing_keys))]
    if bad.numel():
        raise ValueError(
            f"{name}: ids must be in [0, {len(routing_keys) - 1}] (mta.{keys} = {routing_keys}), got {bad[0].item()}"
        )


def expand_to_tokens(routing: SequenceRouting, num_tokens: int, num_experts: int, ep_group=None):
    """Per-sequence routes -> DeepSpeed's ``(l_aux, capacity, E, indices[k,s], locations[k,s], gates[k,s], counts)``."""
    batch = routing.indices.size(0)
    if batch == 0 or num_tokens % batch != 0:
        raise ValueError(f"{num_tokens} tokens cannot be split into {batch} equal-length sequences")
    seq_len = num_tokens // batch
    token_idx = routing.indices.repeat_interleave(seq_len, dim=0)  # [S, k]
    token_w = routing.weights.repeat_interleave(seq_len, dim=0)  # [S, k]
    mask = torch.zeros(num_tokens, num_experts, dtype=torch.int64, device=token_idx.device)
    mask.scatter_(1, token_idx, 1)
    exp_counts = mask.sum(0)
    locations = (torch.cumsum(mask, dim=0) - 1).gather(1, token_idx)
    capacity = exp_counts.max().detach().clone()
    if pg_utils.is_parallel(ep_group):
        ds_comm.all_reduce(capacity, op=ds_comm.ReduceOp.MAX, group=ep_group)
    return (
        routing.aux_loss,
        capacity,
        num_experts,
        token_idx.t().contiguous().to(torch.int32),
        locations.t().contiguous().to(torch.int32),
        token_w.t().contiguous().float(),
        exp_counts.detach(),
    )


def softmax_t_bias(config: MTAConfig) -> Tensor:
    """β at init: ``bias_init`` everywhere, ``+ bias_margin`` on each routing key's assigned adapters."""
    bias = torch.full((config.num_routes, config.num_experts), float(config.bias_init))
    for key_id, adapters in enumerate(config.assignment()):
        bias[key_id, adapters] += float(config.bias_margin)
    return bias
