"""Tokenizer and backbone from the ``mta.model`` section: a hub name or directory, or a from-scratch config."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import transformers
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..config import ConfigError
from ..data import load_tokenizer, train_sentencepiece_tokenizer
from .run_config import ModelConfig

ENCODER_ONLY = ("bert", "roberta")


def model_mode(model: PreTrainedModel) -> str:
    """``seq2seq`` for encoder-decoder models, ``causal`` for decoder-only ones."""
    return "seq2seq" if model.config.is_encoder_decoder else "causal"


def build_tokenizer(
    cfg: ModelConfig, train_texts: Sequence[str], out_dir: Path, train_here: bool = True
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, or a SentencePiece tokenizer trained on ``train_texts`` into ``out_dir``
    (``train_here=False``: another rank trains it; just load it)."""
    if cfg.tokenizer == "backbone":
        tokenizer = load_tokenizer(cfg.backbone)
    elif train_here:
        tokenizer = train_sentencepiece_tokenizer(train_texts, out_dir, cfg.vocab_size)
    else:
        tokenizer = load_tokenizer(out_dir)
    if tokenizer.pad_token_id is None:  # GPT-2 style tokenizers have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_backbone(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """Pretrained weights (``backbone``) or a randomly initialised model (``from_scratch``), seeded."""
    torch.manual_seed(seed)
    if cfg.backbone is not None:
        config = AutoConfig.from_pretrained(cfg.backbone)
        _check_text_to_text(config.model_type)
        auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
        return auto.from_pretrained(cfg.backbone)
    values = dict(cfg.from_scratch)
    model_type = values.pop("model_type")
    _check_text_to_text(model_type)
    try:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **values,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"mta.model.from_scratch: {exc}") from None
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    return auto.from_config(config)


def _check_text_to_text(model_type: str) -> None:
    if model_type in ENCODER_ONLY:
        raise ConfigError(
            f"mta.model: {model_type} is encoder-only; the text-to-text trainer needs an "
            f"encoder-decoder (t5, bart) or decoder-only (gpt2, llama, qwen2) backbone"
        )
