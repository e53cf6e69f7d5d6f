"""The export's tokenizer as a stock ``transformers`` tokenizer (no mta_moe needed to load it)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..data.tokenizer import MTASentencePieceTokenizer, load_tokenizer


def stock_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory``, loadable with ``AutoTokenizer`` alone.

    A tokenizer this library trained (:class:`MTASentencePieceTokenizer`) becomes a ``tokenizers`` fast tokenizer
    of the same SentencePiece model, with the same ``[START] text </s>`` framing as a post-processor
    (:meth:`MTASentencePieceTokenizer.to_fast`); any other tokenizer is returned as loaded (it is already a stock
    one)."""
    tokenizer = load_tokenizer(Path(directory))
    return tokenizer.to_fast() if isinstance(tokenizer, MTASentencePieceTokenizer) else tokenizer
