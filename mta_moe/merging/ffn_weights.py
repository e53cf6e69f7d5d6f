"""The weights of one backbone FFN as plain matrices: read from any supported family, written into a stock model.

Every supported FFN is ``out(act(in_0 x) [* in_1 x])``: one input projection (GPT-2, BART, BERT, T5 v1.0) or a
gated pair (T5 v1.1 ``wi_0``/``wi_1``, Llama/Qwen2 ``gate_proj``/``up_proj``). :class:`FFNWeights` holds them in
``nn.Linear`` layout (``[out, in]``; GPT-2's ``Conv1D`` stores the transpose) so that widening an FFN by extra
hidden units is a concatenation along the hidden axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# the config key holding the FFN width of each family, per stack
WIDTH_KEYS = {
    "t5": {"encoder": "d_ff", "decoder": "d_ff"},
    "bart": {"encoder": "encoder_ffn_dim", "decoder": "decoder_ffn_dim"},
    "gpt2": {"decoder": "n_inner"},
    "llama": {"decoder": "intermediate_size"},
    "bert": {"encoder": "intermediate_size"},
}
# the config key holding the FFN activation of each family
ACTIVATION_KEYS = {
    "t5": "dense_act_fn",
    "bart": "activation_function",
    "gpt2": "activation_function",
    "llama": "hidden_act",
    "bert": "hidden_act",
}
# adapter activation (mta.adapter_activation) -> transformers activation names computing the same function
SAME_ACTIVATION = {
    "relu": {"relu"},
    "gelu": {"gelu"},
    "gelu_new": {"gelu_new", "gelu_pytorch_tanh"},
    "silu": {"silu", "swish"},
    "tanh": {"tanh"},
}


@dataclass
class FFNWeights:
    """``out(act(in_0 x + b_0) [* (in_1 x + b_1)]) + b_out``; matrices in ``nn.Linear`` layout."""

    inputs: list[Tensor]  # each [h, d]
    input_biases: list[Tensor | None]  # each [h] or None
    output: Tensor  # [d, h]
    output_bias: Tensor | None  # [d] or None

    @property
    def width(self) -> int:
        return self.output.shape[1]

    @property
    def gated(self) -> bool:
        return len(self.inputs) == 2

    def widened(self, inputs: list[Tensor], input_biases: list[Tensor | None], output: Tensor) -> "FFNWeights":
        """These weights with extra hidden units appended (rows of each input, columns of the output)."""
        biases = []
        for own, extra, rows in zip(self.input_biases, input_biases, inputs):
            if own is None and extra is None:
                biases.append(None)
            else:
                own = own if own is not None else self.inputs[0].new_zeros(self.width)
                extra = extra if extra is not None else rows.new_zeros(rows.shape[0])
                biases.append(torch.cat([own, extra]))
        return FFNWeights(
            [torch.cat([w, e]) for w, e in zip(self.inputs, inputs)],
            biases,
            torch.cat([self.output, output], dim=1),
            self.output_bias,
        )

    def padded(self, width: int) -> "FFNWeights":
        """Widened to ``width`` hidden units that contribute nothing (zero rows in, zero columns out)."""
        extra = width - self.width
        if extra < 0:
            raise ValueError(f"cannot pad an FFN of width {self.width} down to {width}")
        if extra == 0:
            return self
        zeros_in = [w.new_zeros(extra, w.shape[1]) for w in self.inputs]
        return self.widened(zeros_in, [None] * len(self.inputs), self.output.new_zeros(self.output.shape[0], extra))


def ffn_linears(ffn: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(input projections, output projection) of an FFN module of any supported family (or its wrapper)."""
    if hasattr(ffn, "c_fc") and hasattr(ffn, "c_proj"):  # GPT-2 MLP (Conv1D)
        return [ffn.c_fc], ffn.c_proj
    if hasattr(ffn, "wi_0"):  # T5 v1.1 gated
        return [ffn.wi_0, ffn.wi_1], ffn.wo
    if hasattr(ffn, "wi"):  # T5 v1.0
        return [ffn.wi], ffn.wo
    if hasattr(ffn, "fc1") and hasattr(ffn, "fc2"):  # BART (our wrapper of the inline FFN)
        return [ffn.fc1], ffn.fc2
    if hasattr(ffn, "intermediate") and hasattr(ffn, "dense"):  # BERT (our wrapper)
        return [ffn.intermediate.dense], ffn.dense
    if hasattr(ffn, "gate_proj"):  # Llama / Qwen2 SwiGLU
        return [ffn.gate_proj, ffn.up_proj], ffn.down_proj
    raise ValueError(f"{type(ffn).__name__}: not an FFN of a supported family")


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers.pytorch_utils.Conv1D: weight [in, out]


def _read(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    weight = module.weight.detach()
    weight = weight.t() if _is_conv1d(module) else weight
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    return weight.clone(), None if bias is None else bias.clone()


def read_ffn(ffn: nn.Module) -> FFNWeights:
    """The weights of ``ffn`` as :class:`FFNWeights` (copies)."""
    ins, out = ffn_linears(ffn)
    read_in = [_read(m) for m in ins]
    w_out, b_out = _read(out)
    return FFNWeights([w for w, _ in read_in], [b for _, b in read_in], w_out, b_out)


def write_ffn(ffn: nn.Module, weights: FFNWeights) -> list[nn.Parameter]:
    """Copy ``weights`` into the (already widened) FFN ``ffn``; returns the parameters written."""
    ins, out = ffn_linears(ffn)
    written = []
    pairs = list(zip(ins, weights.inputs, weights.input_biases)) + [(out, weights.output, weights.output_bias)]
    for module, weight, bias in pairs:
        target = weight.t() if _is_conv1d(module) else weight
        if module.weight.shape != target.shape:
            raise ValueError(
                f"{type(module).__name__}: weight of shape {tuple(module.weight.shape)} cannot take "
                f"{tuple(target.shape)}"
            )
        with torch.no_grad():
            module.weight.copy_(target)
            written.append(module.weight)
            own_bias = getattr(module, "bias", None)
            if own_bias is not None:
                own_bias.copy_(bias if bias is not None else torch.zeros_like(own_bias))
                written.append(own_bias)
            elif bias is not None and bool(bias.ne(0).any()):
                raise ValueError(f"{type(module).__name__} has no bias to take a non-zero bias")
    return written
