"""The export's tokenizer as a stock ``transformers`` tokenizer (no mta_moe needed to load it)."""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..data.tokenizer import START_TOKEN, MTASentencePieceTokenizer, load_tokenizer


def stock_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory``, loadable with ``AutoTokenizer`` alone.

    A tokenizer this library trained (:class:`MTASentencePieceTokenizer`) becomes a ``tokenizers`` fast tokenizer
    of the same SentencePiece model, with the same ``[START] text </s>`` framing as a post-processor; any other
    tokenizer is returned as loaded (it is already a stock one)."""
    directory = Path(directory)
    tokenizer = load_tokenizer(directory)
    if not isinstance(tokenizer, MTASentencePieceTokenizer):
        return tokenizer
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import SpmConverter

    backend = SpmConverter(tokenizer).converted()
    start, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    backend.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A </s>", pair=f"{START_TOKEN} $A </s> $B </s>",
        special_tokens=[(START_TOKEN, start), ("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=START_TOKEN, eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   model_max_length=tokenizer.model_max_length)
    _check_same_ids(tokenizer, fast, directory)
    return fast


# encoded by both tokenizers at conversion: words, digits, punctuation, accents, unknown characters
_CHECK_TEXTS = ("Review: the pacing was not flimsy at all.", "12,5% of 3 dogs -- 'quoted' (text)?",
                "ünïcödé ÅÇ ﬁ ① 漢字 \u00a0 spaces   here", "")


def _check_same_ids(ours: PreTrainedTokenizerBase, fast: PreTrainedTokenizerBase, directory: Path) -> None:
    """The converted tokenizer must encode a few awkward texts exactly as the original does."""
    for text in _CHECK_TEXTS:
        if ours(text).input_ids != fast(text).input_ids:
            raise ValueError(f"{directory}: the stock conversion of the tokenizer encodes {text[:60]!r} differently")
