"""Sequence-grouped dispatch: whole sequences grouped by adapter, each adapter run once on its block.

Routing is per sequence, so the token-level machinery of a generic MoE (per-token top-k, capacity
padding to E × max-load, per-token slot maps, dense dispatch/combine) is unnecessary. Each adapter
gathers its sequences into one block, runs once, and its routing weight is applied inside the
bottleneck where the expert supports it (:meth:`BottleneckAdapter.scaled_forward`); a weighted
scatter-add combines the blocks. Gather and combine are single autograd nodes that write one
[B, L, d] buffer each way; at ``ep_size`` 1 no block larger than one adapter's share is allocated.
With ``ep_size`` > 1, the tokens of the routed sequences are exchanged between ranks with exact
split sizes (no padding), and the weights are applied to the returned outputs.
At ``ep_size`` 1, bottleneck adapters take one of two fixed-shape forms instead (no host synchronisation):
grouped GEMMs (:mod:`.grouped_gemm`) wherever ``torch._grouped_mm`` supports the device and dtype, else
per-sequence gathered weights and two batched matmuls (:mod:`.batched_adapters`) where the gathered weights
are no larger than the gathered tokens (:func:`choose_form`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn import functional as dist_fn

from . import batched_adapters, grouped_gemm
from .gate import SequenceRouting

# Blocks smaller than this (elements) take ``w · expert(x)``: below it the two small concatenations of
# the folded form cost more than the d-wide multiply they save.
SCALED_FORWARD_MIN_ELEMENTS = 1 << 16


@dataclass
class RoutePlan:
    """The routes (sequence, adapter) of a batch sorted by adapter."""

    sequences: Tensor  # [B·k] int64: sequence of each route, grouped by adapter
    weights: Tensor  # [B·k] fp32: routing weight of each route
    counts: list[int]  # routes per global adapter


def plan_routes(routing: SequenceRouting, num_experts: int) -> RoutePlan:
    """Sort the (sequence, adapter) routes of ``routing`` by adapter (stable: sequence order inside a block)."""
    batch, k = routing.indices.shape
    flat = routing.indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sequences = torch.arange(batch, device=flat.device).repeat_interleave(k)[order]
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    return RoutePlan(sequences, routing.weights.reshape(-1)[order], counts)


class SequenceGather(torch.autograd.Function):
    """``x`` [B, L, d] → one block per adapter holding its routed sequences; backward scatter-adds into one buffer."""

    @staticmethod
    def forward(ctx, hidden_states: Tensor, sequences: Tensor, counts: list[int]):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.shape = hidden_states.shape
        ctx.counts = counts
        ctx.save_for_backward(sequences)
        return tuple(hidden_states.index_select(0, idx) for idx in sequences.split(counts))

    @staticmethod
    def backward(ctx, *block_grads):  # type: ignore[override]
        (sequences,) = ctx.saved_tensors
        if all(g is None for g in block_grads):
            return None, None, None
        return _scatter_blocks(sequences, ctx.counts, ctx.shape, block_grads), None, None


def _scatter_blocks(sequences: Tensor, counts: list[int], shape: tuple, blocks) -> Tensor:
    """Sum the rows of ``blocks`` into a new [B, ...] tensor at rows ``sequences`` (split by ``counts``).

    A block given as None adds nothing. When every sequence has exactly one route (k = 1) and the given
    blocks cover all of them, rows are copied into uninitialised memory instead of added onto zeros.
    """
    present = [(idx, block) for idx, block in zip(sequences.split(counts), blocks) if block is not None]
    once = len(sequences) == shape[0] == sum(len(idx) for idx, _ in present)
    out = present[0][1].new_empty(shape) if once else present[0][1].new_zeros(shape)
    write = out.index_copy_ if once else out.index_add_
    for idx, block in present:
        write(0, idx, block)
    return out


class SequenceCombine(torch.autograd.Function):
    """Blocks (one per adapter, rows = routed sequences) → their sum per sequence [B, L, d]."""

    @staticmethod
    def forward(ctx, sequences: Tensor, counts: list[int], batch: int, *blocks: Tensor):  # type: ignore[override]
        ctx.counts = counts
        ctx.save_for_backward(sequences)
        return _scatter_blocks(sequences, counts, (batch, *blocks[0].shape[1:]), blocks)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (sequences,) = ctx.saved_tensors
        grads = tuple(grad_out.index_select(0, idx) for idx in sequences.split(ctx.counts))
        return (None, None, None, *grads)


FORMS = ("gathered_weights", "grouped_gemm", "loop")


def choose_form(
    experts: nn.ModuleList, hidden_states: Tensor, k: int, ep_size: int = 1, forced: str | None = None
) -> str:
    """Which computation runs the mixture: ``forced`` (one of :data:`FORMS`, checked to apply) or, with None,
    grouped GEMMs where usable, else per-sequence gathered weights where preferred, else the per-adapter loop.
    ``ep_size`` > 1 always takes the loop (tokens travel to the adapters' ranks).

    Grouped GEMMs come first because on CPU they compute bit for bit what the loop computes, the path every
    documented training result was measured on; gathered weights serve where they are not usable (compiling in
    float32, CUDA float32, unaligned widths). Forced, gathered weights are the faster form on CPU for
    sequences of at least 2·r tokens (README, *Performance*)."""
    if forced is not None and forced not in FORMS:
        raise ValueError(f"dispatch form must be one of {list(FORMS)} or None (chosen per call), got {forced!r}")
    if ep_size > 1 or forced == "loop":
        if forced not in (None, "loop"):
            raise ValueError(
                f"dispatch form {forced!r} needs ep_size 1 (got {ep_size}): only the loop exchanges "
                "tokens between ranks"
            )
        return "loop"
    if forced == "gathered_weights":
        if not grouped_gemm.bottlenecks_like(experts, hidden_states):
            raise ValueError(
                "dispatch form 'gathered_weights' needs bottleneck experts in the input's dtype and device"
            )
        return forced
    if forced == "grouped_gemm":
        if not grouped_gemm.usable(experts, hidden_states, k):
            raise ValueError(
                "dispatch form 'grouped_gemm' is not usable here (see mta_moe.modeling.grouped_gemm."
                "usable: bottleneck experts, a kernel for the device and dtype, aligned widths)"
            )
        return forced
    if grouped_gemm.usable(experts, hidden_states, k):
        return "grouped_gemm"
    return "gathered_weights" if batched_adapters.preferred(experts, hidden_states, k) else "loop"


def grouped_dispatch(
    hidden_states: Tensor,
    routing: SequenceRouting,
    experts: nn.ModuleList,
    num_experts: int,
    ep_size: int = 1,
    ep_group=None,
    form: str | None = None,
) -> tuple[Tensor, Tensor]:
    """``Σ_j w_bj · A_{i_bj}(x_b)`` for every sequence b; returns (output [B, L, d], tokens per global expert [E]).

    ``form``: see :func:`choose_form` (None: chosen per call). The loop runs each adapter once on its gathered
    block (at ``ep_size`` > 1 after exchanging tokens between ranks).
    """
    chosen = choose_form(experts, hidden_states, routing.indices.size(1), ep_size, form)
    if chosen == "gathered_weights":
        return batched_adapters.gathered_weight_mixture(hidden_states, routing.indices, routing.weights, experts)
    if chosen == "grouped_gemm":
        return grouped_gemm.grouped_gemm_mixture(hidden_states, routing.indices, routing.weights, experts)
    batch, seq_len, _ = hidden_states.shape
    plan = plan_routes(routing, num_experts)
    token_counts = torch.tensor(plan.counts, device=hidden_states.device) * seq_len
    if ep_size == 1:
        blocks = SequenceGather.apply(hidden_states, plan.sequences, plan.counts)
        weights = plan.weights.split(plan.counts)
        if not torch.is_grad_enabled():  # inference (e.g. each decoding step): adapters without rows are skipped
            outs = [_run_expert(e, b, w) if len(b) else None for e, b, w in zip(experts, blocks, weights)]
            return _scatter_blocks(plan.sequences, plan.counts, hidden_states.shape, outs), token_counts
        outs = [_run_expert(expert, block, w) for expert, block, w in zip(experts, blocks, weights)]
        return SequenceCombine.apply(plan.sequences, plan.counts, batch, *outs), token_counts
    (tokens,) = SequenceGather.apply(hidden_states, plan.sequences, [len(plan.sequences)])
    expert_out = _exchange_and_run(tokens.reshape(-1, tokens.size(-1)), token_counts, experts, ep_size, ep_group)
    weighted = expert_out.view(tokens.shape) * plan.weights.to(expert_out.dtype).view(-1, 1, 1)
    return SequenceCombine.apply(plan.sequences, [len(plan.sequences)], batch, weighted), token_counts


def _run_expert(expert: nn.Module, block: Tensor, weights: Tensor) -> Tensor:
    """``w · expert(block)`` per row of ``block`` [n, L, d] (an empty block still joins autograd)."""
    scale = weights.view(-1, *([1] * (block.dim() - 1)))
    if hasattr(expert, "scaled_forward") and block.numel() >= SCALED_FORWARD_MIN_ELEMENTS:
        return expert.scaled_forward(block, scale)
    out = expert(block)
    out = out[0] if isinstance(out, tuple) else out
    return out * scale.to(out.dtype)


def _run_local_experts(tokens: Tensor, counts: list[int], experts: nn.ModuleList) -> Tensor:
    """Run local expert j on the j-th contiguous block of ``tokens`` (an empty block still joins autograd)."""
    outs = []
    for expert, block in zip(experts, torch.split(tokens, counts, dim=0)):
        out = expert(block)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs, dim=0)


def _exchange_and_run(tokens: Tensor, token_counts: Tensor, experts: nn.ModuleList, ep_size: int, ep_group) -> Tensor:
    """Send each expert's tokens to the rank holding it, run the local experts, send the results back."""
    num_local = len(experts)
    # counts[src, j]: tokens rank src sends to my local expert j
    recv_counts = torch.empty_like(token_counts)
    dist.all_to_all_single(recv_counts, token_counts.contiguous(), group=ep_group)
    send_split = token_counts.view(ep_size, num_local).sum(1).tolist()
    recv_matrix = recv_counts.view(ep_size, num_local)
    recv_split = recv_matrix.sum(1).tolist()
    received = tokens.new_empty(sum(recv_split), tokens.size(1))
    received = dist_fn.all_to_all_single(received, tokens, recv_split, send_split, group=ep_group)
    # received is ordered (source rank, local expert); regroup it by local expert
    perm = _regroup_permutation(recv_matrix).to(tokens.device)
    expert_out = _run_local_experts(received.index_select(0, perm), recv_matrix.sum(0).tolist(), experts)
    back = expert_out.index_select(0, torch.argsort(perm))  # (source rank, local expert) order again
    returned = tokens.new_empty(tokens.shape)
    return dist_fn.all_to_all_single(returned, back, send_split, recv_split, group=ep_group)


def _regroup_permutation(counts: Tensor) -> Tensor:
    """Indices that reorder segments laid out (source, expert) into (expert, source) order."""
    sources, local = counts.shape
    flat = counts.reshape(-1).tolist()
    starts, pos = [], 0
    for c in flat:
        starts.append(pos)
        pos += c
    pieces = []
    for j in range(local):
        for s in range(sources):
            i = s * local + j
            pieces.append(torch.arange(starts[i], starts[i] + flat[i]))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
