"""Multi-task data: canonical rows, strict readers, hub recipes, the bundled suite, tokenizer, sampling.

The names below load on first use, so ``mta-moe check-data`` (which needs only the readers) does not import torch
or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "IGNORE_INDEX": "collate",
    "Collator": "collate",
    "TruncationReport": "collate",
    "tokenize_examples": "collate",
    "DataConfig": "config",
    "Curriculum": "curriculum",
    "Phase": "curriculum",
    "DataError": "formats",
    "LoadReport": "formats",
    "load_examples": "formats",
    "validate_row": "formats",
    "LengthGroupedSampler": "length_grouping",
    "TaskData": "pipeline",
    "load_task_data": "pipeline",
    "make_sampler": "pipeline",
    "RECIPES": "recipes",
    "load_recipe": "recipes",
    "TaskRegistry": "registry",
    "MixtureSampler": "sampling",
    "SamplingConfig": "sampling",
    "rank_slice": "sampling",
    "START_TOKEN": "tokenizer",
    "MTASentencePieceTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_sentencepiece_tokenizer": "tokenizer",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
