"""Bottleneck adapters as two batched matmuls over per-sequence gathered weights (ep_size 1).

Routing is per sequence, so instead of moving each route's tokens to its adapter (the loop, the grouped-GEMM
form), each sequence can fetch its adapters' weights: ``down`` rows and ``up`` columns of the k selected
adapters are gathered into ``[B, k·r, d]`` stacks, and the whole mixture is two ``torch.bmm`` calls,

    h = act(x_b · D_bᵀ + b_down)  scaled per route in the r-wide bottleneck,   out_b = h · U_b,

with ``D_b = [D_{i_b1}; …; D_{i_bk}]`` and ``U_b`` likewise, so ``out_b = Σ_j w_bj · up_j(act(down_j(x_b)))``.
No sort, no token gather, no combine, no host synchronisation; every shape depends on the batch's shape only,
and ``torch.bmm`` exists for every floating dtype and device, so the layer also compiles whole in float32.

The gathered weights take ``2·B·k·r·d`` elements against the ``B·k·L·d`` a token gather moves, so this form is
preferred only where ``2·r ≤ L`` (:func:`preferred`): training and scoring of whole sequences. Decoding steps
(L = 1) keep the token-moving forms, and so do batches whose gathered weights would pass the CPU's eager size
limit (many sequences: the weights are gathered once per route, not once per adapter). ``mta.dispatch:
grouped`` takes it where grouped GEMMs are not usable (:func:`.dispatch.choose_form`); ``mta.dispatch:
gathered_weights`` always. Measured on 2 CPU cores (``benchmarks/layer_dispatch.py``): see the README.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import grouped_gemm
from .adapters import ACTIVATION_FUNCTIONS


def preferred(experts: nn.ModuleList, hidden_states: Tensor, routes_per_sequence: int = 1) -> bool:
    """Whether this form should run: applicable, the gathered weights (2·r per route and hidden unit) are no
    larger than the tokens a token-moving form would gather (L per route and hidden unit), and on CPU in eager
    mode they fit :data:`.grouped_gemm.CPU_EAGER_MAX_BYTES` (as the grouped-GEMM form's tokens must)."""
    if not grouped_gemm.bottlenecks_like(experts, hidden_states):
        return False
    batch, seq_len, hidden = hidden_states.shape
    rank = experts[0].down.out_features
    gathered = 2 * batch * routes_per_sequence * rank * hidden * hidden_states.element_size()
    return 2 * rank <= seq_len and grouped_gemm.fits_cpu_eager(gathered, hidden_states.device)


def gathered_weight_mixture(
    hidden_states: Tensor, indices: Tensor, weights: Tensor, experts: nn.ModuleList
) -> tuple[Tensor, Tensor]:
    """``Σ_j w_bj · A_{i_bj}(x_b)`` per sequence with ``indices``/``weights`` [B, k]; also tokens per expert [E]."""
    batch, seq_len, hidden = hidden_states.shape
    k, num_experts = indices.size(1), len(experts)
    flat = indices.reshape(-1)
    rank = experts[0].down.out_features
    down, down_b, up, up_b = grouped_gemm.stacked_weights(experts)  # [E, d, r], [E, r], [E, r, d], [E, d]
    down_rows = down.transpose(1, 2).index_select(0, flat).view(batch, k * rank, hidden)
    up_rows = up.index_select(0, flat).view(batch, k * rank, hidden)
    h = torch.bmm(hidden_states, down_rows.transpose(1, 2))  # [B, L, k·r]
    if down_b is not None:
        h = h + down_b.index_select(0, flat).view(batch, 1, k * rank)
    h = ACTIVATION_FUNCTIONS[experts[0].activation](h).view(batch, seq_len, k, rank)
    h = h * weights.to(h.dtype).view(batch, 1, k, 1)
    out = torch.bmm(h.view(batch, seq_len, k * rank), up_rows)  # [B, L, d]
    if up_b is not None:
        out = out + grouped_gemm.up_bias_per_sequence(indices, weights, up_b).unsqueeze(1)
    return out, grouped_gemm.route_counts(flat, num_experts) * seq_len
