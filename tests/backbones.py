"""Tiny randomly initialised configs of the real architectures (no download)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 96


def _t5(gated: bool):
    return tf.T5ForConditionalGeneration(
        tf.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu" if gated else "relu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _bart(cls=tf.BartForConditionalGeneration, cfg_cls=tf.BartConfig):
    return cls(
        cfg_cls(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
        )
    )


def _gpt2():
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=2))


def _llama(cls=tf.LlamaForCausalLM, cfg_cls=tf.LlamaConfig):
    return cls(
        cfg_cls(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _bert(cls=tf.BertForSequenceClassification, cfg_cls=tf.BertConfig):
    return cls(
        cfg_cls(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            num_labels=3,
            pad_token_id=1,
        )
    )


BACKBONES = {
    "t5": lambda: _t5(False),
    "t5_gated": lambda: _t5(True),
    "bart": _bart,
    "mbart": lambda: _bart(tf.MBartForConditionalGeneration, tf.MBartConfig),
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": lambda: _llama(tf.Qwen2ForCausalLM, tf.Qwen2Config),
    "bert": _bert,
    "roberta": lambda: _bert(tf.RobertaForSequenceClassification, tf.RobertaConfig),
}
SEQ2SEQ = {"t5", "t5_gated", "bart", "mbart"}


def make_backbone(name: str):
    torch.manual_seed(0)
    return BACKBONES[name]().eval()


def make_inputs(name: str, batch: int = 4, seq_len: int = 10, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # one padded row
    inputs = {"input_ids": ids, "attention_mask": mask}
    if name in SEQ2SEQ:
        inputs["labels"] = torch.randint(3, VOCAB, (batch, 6), generator=gen)
    elif name in ("bert", "roberta"):
        inputs["labels"] = torch.randint(0, 3, (batch,), generator=gen)
    else:
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    return inputs


def perturb_mta(model, seed: int, scale: float, biases: bool = True):
    """Move every adapter (noise of ``scale``) and, with ``biases``, selector bias (unit noise) away from its
    initial value, as training would; returns the model in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in model.mta_layers.values():
            for p in layer.local_experts.parameters():
                p.add_(torch.randn_like(p) * scale)
            if biases:
                layer.selector.task_bias.add_(torch.randn_like(layer.selector.task_bias))
    return model.eval()
