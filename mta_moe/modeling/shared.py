"""Stage-2 parts: shared adapters and the gate network that mixes them with the task-adapter mixture.

With ``M`` the task mixture's output and ``A_j`` the shared adapters, the gate network reads the sequence
representations of 1+S candidates (``Linear((1+S)·d → h) → ReLU → Linear(h → 1+S) → softmax``, as in the
official code) and the output is ``Σ_j g_j S_j``. Two forms (``mta.stage2_form``):

* ``residual``: ``S_0 = M``, ``S_j = M + A_j(x)``, so the output is ``M + Σ_{j≥1} g_j A_j(x)``. Shared
  up-projections start at zero, so switching a layer to stage 2 leaves its output unchanged.
* ``official``: ``S_0 = M``, ``S_j = FFN(x) + A_j(x)`` (a shared expert: the base FFN with a shared adapter), so
  the output is ``g_0·M + Σ_{j≥1} g_j·(FFN(x) + A_j(x))``, the official code's form: the gate can down-weight
  the task mixture. At the switch the output moves from ``M`` to ``g_0·M + (1 − g_0)·FFN(x)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .adapters import BottleneckAdapter
from .gate import sequence_representation


class GateNetwork(nn.Sequential):
    """MLP over the concatenated sequence representations of the 1+S candidates → mixing logits."""

    def __init__(self, hidden_size: int, num_candidates: int, gate_hidden: int) -> None:
        super().__init__(
            nn.Linear(num_candidates * hidden_size, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, num_candidates)
        )

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for linear in (self[0], self[2]):
                bound = 1.0 / math.sqrt(linear.in_features)
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)


def build_shared_adapters(
    hidden_size: int, num_shared: int, adapter_dim: int, activation: str, generator: torch.Generator, bias: bool = True
) -> nn.ModuleList:
    adapters = nn.ModuleList(BottleneckAdapter(hidden_size, adapter_dim, activation, bias) for _ in range(num_shared))
    for adapter in adapters:
        adapter.reset_parameters(generator)
    return adapters


def mix_with_shared(
    hidden_states: Tensor,
    mixture_out: Tensor,
    shared_adapters: nn.ModuleList,
    gate_network: GateNetwork,
    attention_mask: Tensor | None,
    repr_mode: str,
    mix_weights: Tensor | None = None,
    base_out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (stage-2 output, mixing weights [B, 1+S]); pass ``mix_weights`` to reuse a decision.
    ``base_out``: the base FFN's output ``FFN(x)`` for the ``official`` form (None: the ``residual`` form)."""
    deltas = [adapter(hidden_states) for adapter in shared_adapters]
    if base_out is not None:
        deltas = [base_out + d for d in deltas]  # the candidates themselves, FFN(x) + A_j(x)
    if mix_weights is None:
        first = sequence_representation(mixture_out, attention_mask, repr_mode)
        # the representation is linear in its input, so repr(M + A_j) = repr(M) + repr(A_j)
        offset = first if base_out is None else 0.0
        reps = [first] + [offset + sequence_representation(d, attention_mask, repr_mode) for d in deltas]
        logits = gate_network(torch.cat(reps, dim=-1).to(gate_network[0].weight.dtype))
        mix_weights = F.softmax(logits.float(), dim=-1)
    if base_out is None:
        out = mixture_out
    else:
        out = mix_weights[:, 0].to(mixture_out.dtype).view(-1, 1, 1) * mixture_out
    for j, delta in enumerate(deltas):
        out = out + mix_weights[:, j + 1].to(delta.dtype).view(-1, 1, 1) * delta
    return out, mix_weights
