"""Sequence-grouped dispatch: whole sequences grouped by adapter, each adapter run once on a contiguous block.

Routing is per sequence, so the token-level machinery of a generic MoE (capacity padding to
E × max-load, per-token slot maps) is unnecessary. With ``ep_size`` > 1, the tokens of the routed
sequences are exchanged between ranks with exact split sizes (no padding).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn import functional as dist_fn

from .gate import SequenceRouting


def grouped_dispatch(hidden_states: Tensor, routing: SequenceRouting, experts: nn.ModuleList, num_experts: int,
                     ep_size: int = 1, ep_group=None) -> tuple[Tensor, Tensor]:
    """``Σ_j w_bj · A_{i_bj}(x_b)`` for every sequence b; returns (output [B, L, d], tokens per global expert [E])."""
    batch, seq_len, d = hidden_states.shape
    k = routing.indices.size(1)
    flat_e = routing.indices.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    seq_of_route = torch.arange(batch, device=flat_e.device).repeat_interleave(k)[order]
    weights = routing.weights.reshape(-1)[order]
    route_counts = torch.bincount(flat_e, minlength=num_experts)
    tokens = hidden_states.index_select(0, seq_of_route).reshape(-1, d)  # [routes·L, d], grouped by expert
    token_counts = route_counts * seq_len
    if ep_size == 1:
        expert_out = _run_local_experts(tokens, token_counts.tolist(), experts)
    else:
        expert_out = _exchange_and_run(tokens, token_counts, experts, ep_size, ep_group)
    weighted = expert_out.view(-1, seq_len, d).float() * weights.view(-1, 1, 1)
    out = torch.zeros(batch, seq_len, d, dtype=torch.float32, device=hidden_states.device)
    out = out.index_add(0, seq_of_route, weighted)
    return out.to(hidden_states.dtype), token_counts


def _run_local_experts(tokens: Tensor, counts: list[int], experts: nn.ModuleList) -> Tensor:
    """Run local expert j on the j-th contiguous block of ``tokens`` (an empty block still joins autograd)."""
    outs = []
    for expert, block in zip(experts, torch.split(tokens, counts, dim=0)):
        out = expert(block)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs, dim=0)


def _exchange_and_run(tokens: Tensor, token_counts: Tensor, experts: nn.ModuleList, ep_size: int,
                      ep_group) -> Tensor:
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
