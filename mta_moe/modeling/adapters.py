"""Task adapters: the experts of the MTA layer, and the stage-2 shared adapters."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATION_FUNCTIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
}


class BottleneckAdapter(nn.Module):
    """``up(act(down(x)))`` with d -> r -> d; the up-projection starts at zero so the adapter adds nothing.

    ``bias=False`` drops both bias vectors (what an exact fold into a bias-free FFN such as T5's needs)."""

    def __init__(self, hidden_size: int, adapter_dim: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"adapter activation must be one of {sorted(ACTIVATION_FUNCTIONS)}, got {activation!r}")
        self.activation = activation
        self.down = nn.Linear(hidden_size, adapter_dim, bias=bias)
        self.up = nn.Linear(adapter_dim, hidden_size, bias=bias)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform down-projection (like ``nn.Linear``), zero up-projection."""
        bound = 1.0 / math.sqrt(self.down.in_features)
        with torch.no_grad():
            self.down.weight.uniform_(-bound, bound, generator=generator)
            if self.down.bias is not None:
                self.down.bias.uniform_(-bound, bound, generator=generator)
            self.up.weight.zero_()
            if self.up.bias is not None:
                self.up.bias.zero_()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(ACTIVATION_FUNCTIONS[self.activation](self.down(hidden_states)))

    def scaled_forward(self, hidden_states: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``scale · forward(x)`` with the scale applied in the r-wide bottleneck, not on the d-wide output.

        ``scale`` broadcasts against ``hidden_states[..., :1]``. The bias rides on a column holding the
        scale, so the up-projection is one matmul: ``[s·h, s] @ [U | b]ᵀ = s·(U h + b)``.
        """
        h = ACTIVATION_FUNCTIONS[self.activation](self.down(hidden_states))
        scale = scale.to(h.dtype)
        if self.up.bias is None:
            return F.linear(h * scale, self.up.weight)
        h = torch.cat([h * scale, scale.expand(*h.shape[:-1], 1)], dim=-1)
        return F.linear(h, torch.cat([self.up.weight, self.up.bias.unsqueeze(1)], dim=1))


def make_expert_template(
    kind: str, hidden_size: int, adapter_dim: int, activation: str, ffn: nn.Module | None, bias: bool = True
) -> nn.Module:
    """The module DeepSpeed copies once per local expert.

    ``bottleneck``: a fresh :class:`BottleneckAdapter`. ``ffn``: a copy of the backbone's FFN
    (the official ALTER variant), so every expert starts as the pretrained FFN.
    """
    if kind == "bottleneck":
        return BottleneckAdapter(hidden_size, adapter_dim, activation, bias)
    if kind == "ffn":
        if ffn is None:
            raise ValueError("mta.expert_kind='ffn' needs the backbone's FFN module to copy (ffn=None was given)")
        return copy.deepcopy(ffn)
    raise ValueError(f"mta.expert_kind: must be one of ['bottleneck', 'ffn'], got {kind!r}")


def expert_generator(init_seed: int, layer_id: int, global_expert_id: int) -> torch.Generator:
    """A private RNG for one expert, so its initial weights do not depend on the ep size or rank."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed((init_seed * 1_000_003 + layer_id * 10_007 + global_expert_id) % (2**63 - 1))
    return gen
