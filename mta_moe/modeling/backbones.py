"""Where each supported Hugging Face family keeps its FFN sub-layer, and how to swap it for an MTA layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


class BertFeedForward(nn.Module):
    """BERT's FFN as one d -> d module: ``output.dense(intermediate(x))`` (dropout/LayerNorm stay in BertOutput)."""

    def __init__(self, intermediate: nn.Module, dense: nn.Linear) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.dense = dense

    def forward(self, hidden_states):
        return self.dense(self.intermediate(hidden_states))


class BartFeedForward(nn.Module):
    """BART's inline FFN as one module: ``fc2(dropout(act(fc1(x))))``."""

    def __init__(self, fc1: nn.Linear, activation: nn.Module, activation_dropout: float, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.activation, self.fc2 = fc1, activation, fc2
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, hidden_states):
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


def _t5_get(block):
    return block.layer[-1].DenseReluDense


def _t5_set(block, module):
    block.layer[-1].DenseReluDense = module


def _mlp_get(block):
    return block.mlp


def _mlp_set(block, module):
    block.mlp = module


def _bert_get(block):
    return BertFeedForward(block.intermediate, block.output.dense)


def _bert_set(block, module):
    # BertLayer calls output(intermediate(x), x): intermediate now returns the MTA output (d)
    # and output.dense is the identity, so dropout + LayerNorm(out + x) apply as before.
    block.intermediate = module
    block.output.dense = nn.Identity()


def _bart_get(block):
    return BartFeedForward(block.fc1, block.activation_fn, block.activation_dropout, block.fc2)


def _bart_set(block, module):
    # the layer computes fc2(dropout(act(fc1(x)))): fc1 now returns the whole MTA output,
    # the rest becomes the identity (the activation dropout moved inside BartFeedForward)
    block.fc1 = module
    block.activation_fn = nn.Identity()
    block.activation_dropout = 0.0
    block.fc2 = nn.Identity()


@dataclass(frozen=True)
class BackboneFamily:
    """A family's blocks per stack (path suffix of their ModuleList) and its FFN accessors."""

    name: str
    model_types: tuple[str, ...]
    stacks: dict[str, str]
    get_ffn: Callable[[nn.Module], nn.Module]
    set_ffn: Callable[[nn.Module, nn.Module], None]
    hidden_size_attr: str
    encoder_decoder: bool = False


FAMILIES = [
    BackboneFamily(
        "t5",
        ("t5", "mt5"),
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        _t5_get,
        _t5_set,
        "d_model",
        encoder_decoder=True,
    ),
    BackboneFamily(
        "bart",
        ("bart", "mbart"),
        {"encoder": "encoder.layers", "decoder": "decoder.layers"},
        _bart_get,
        _bart_set,
        "d_model",
        encoder_decoder=True,
    ),
    BackboneFamily("gpt2", ("gpt2",), {"decoder": "h"}, _mlp_get, _mlp_set, "n_embd"),
    BackboneFamily("llama", ("llama", "qwen2"), {"decoder": "layers"}, _mlp_get, _mlp_set, "hidden_size"),
    BackboneFamily("bert", ("bert", "roberta"), {"encoder": "encoder.layer"}, _bert_get, _bert_set, "hidden_size"),
]
SUPPORTED_MODEL_TYPES = sorted(t for f in FAMILIES for t in f.model_types)


def family_for(model: nn.Module) -> BackboneFamily:
    """The registry entry for a ``transformers`` model, or an error listing the supported types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(f"model_type {model_type!r} is not supported; supported model types: {SUPPORTED_MODEL_TYPES}")


def find_stack(model: nn.Module, suffix: str) -> tuple[str, nn.ModuleList]:
    """The ModuleList of blocks whose qualified name is ``suffix`` or ends with ``.suffix``."""
    matches = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and (n == suffix or n.endswith("." + suffix))
    ]
    if len(matches) != 1:
        raise ValueError(
            f"expected one block list named '*{suffix}' in {type(model).__name__}, found {[n for n, _ in matches]}"
        )
    return matches[0]
