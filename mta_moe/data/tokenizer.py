"""An offline SentencePiece tokenizer exposed as a ``transformers`` tokenizer, and tokenizer loading.

``train_sentencepiece_tokenizer`` trains a real SentencePiece unigram model on the training text and
wraps it in :class:`MTASentencePieceTokenizer` (a ``transformers`` SentencePiece-backed tokenizer):
``save_pretrained`` / ``from_pretrained`` as usual. Every encoded sequence is ``[START] text </s>``:
position 0 is the ``[START]`` token whose hidden state the gate reads (``sequence_repr: first``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

START_TOKEN = "[START]"
# ids fixed at training time: pad 0, eos 1, unk 2, [START] 3 (T5's convention for the first three)
SPECIAL_IDS = {"<pad>": 0, "</s>": 1, "<unk>": 2, START_TOKEN: 3}


class MTASentencePieceTokenizer(SentencePieceBackend):
    """SentencePiece tokenizer adding ``[START]`` in front and ``</s>`` at the end of each sequence."""

    vocab_files_names = {"vocab_file": "spiece.model"}
    model_input_names = ["input_ids", "attention_mask"]
    is_fast = False

    def __init__(
        self, vocab_file: str, eos_token: str = "</s>", unk_token: str = "<unk>", pad_token: str = "<pad>", **kwargs
    ) -> None:
        kwargs.setdefault("bos_token", START_TOKEN)
        super().__init__(
            vocab_file=vocab_file,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            special_tokens_pattern="none",
            **kwargs,
        )

    @property
    def start_token_id(self) -> int:
        return self.bos_token_id

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        ids = [self.bos_token_id] + token_ids_0 + [self.eos_token_id]
        return ids if token_ids_1 is None else ids + token_ids_1 + [self.eos_token_id]

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return [int(t in (self.bos_token_id, self.eos_token_id, self.pad_token_id)) for t in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        return mask if token_ids_1 is None else mask + [0] * len(token_ids_1) + [1]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    def to_fast(self) -> PreTrainedTokenizerFast:
        """The same SentencePiece model as a stock ``tokenizers`` fast tokenizer, with the ``[START] text </s>``
        framing as its post-processor; checked to encode a few awkward texts exactly as this one does."""
        from tokenizers import processors
        from transformers.convert_slow_tokenizer import SpmConverter

        backend = SpmConverter(self).converted()
        backend.post_processor = processors.TemplateProcessing(
            single=f"{START_TOKEN} $A </s>",
            pair=f"{START_TOKEN} $A </s> $B </s>",
            special_tokens=[(START_TOKEN, self.bos_token_id), ("</s>", self.eos_token_id)],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=START_TOKEN,
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            model_max_length=self.model_max_length,
        )
        for text in _CHECK_TEXTS:
            if self(text).input_ids != fast(text).input_ids:
                raise ValueError(
                    f"{self.name_or_path}: the stock conversion of the tokenizer encodes {text[:60]!r} differently"
                )
        return fast

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The usual files, plus ``tokenizer.json`` (the :meth:`to_fast` serialisation), so ``AutoTokenizer`` loads
        the folder without mta_moe and without converting."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / TOKENIZER_JSON
        self.to_fast().backend_tokenizer.save(str(path))
        return (*files, str(path))


TOKENIZER_JSON = "tokenizer.json"
# encoded by both tokenizers at conversion: words, digits, punctuation, accents, unknown characters
_CHECK_TEXTS = (
    "Review: the pacing was not flimsy at all.",
    "12,5% of 3 dogs -- 'quoted' (text)?",
    "ünïcödé ÅÇ ﬁ ① 漢字 \u00a0 spaces   here",
    "",
)


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 2000,
    model_type: str = "unigram",
    seed_sentencepiece_size: int = 100_000,
) -> MTASentencePieceTokenizer:
    """Train SentencePiece on ``texts``, save a loadable tokenizer in ``out_dir`` and return it.

    ``vocab_size`` is lowered to what the text supports when it is too large, and the file
    ``sentencepiece_training.json`` in ``out_dir`` records both numbers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("tokenizer training: no text")
    requested, size = vocab_size, vocab_size
    prefix = str(out_dir / "spiece")
    while True:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_prefix=prefix,
                vocab_size=size,
                model_type=model_type,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                user_defined_symbols=[START_TOKEN],
                character_coverage=1.0,
                num_threads=1,
                seed_sentencepiece_size=seed_sentencepiece_size,
                hard_vocab_limit=True,
                minloglevel=2,
            )
            break
        except RuntimeError as exc:  # "Vocabulary size too high (N). Please set it to a value <= M."
            limit = _suggested_limit(str(exc))
            if limit is None or limit >= size:
                raise
            size = limit
    (out_dir / "spiece.vocab").unlink(missing_ok=True)
    tokenizer = MTASentencePieceTokenizer(vocab_file=prefix + ".model")
    tokenizer.save_pretrained(out_dir)
    (out_dir / "sentencepiece_training.json").write_text(
        json.dumps(
            {"requested_vocab_size": requested, "vocab_size": size, "model_type": model_type, "sentences": len(texts)},
            indent=2,
        )
        + "\n"
    )
    return MTASentencePieceTokenizer.from_pretrained(out_dir)


def _suggested_limit(message: str) -> int | None:
    marker = "value <= "
    if marker not in message:
        return None
    digits = "".join(ch for ch in message.split(marker, 1)[1] if ch.isdigit())
    return int(digits) if digits else None


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer by hub name or local directory; directories written by this module load as
    :class:`MTASentencePieceTokenizer`, anything else through ``AutoTokenizer``."""
    path = Path(name_or_path)
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            tokenizer_class = json.loads(config.read_text()).get("tokenizer_class")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if tokenizer_class == MTASentencePieceTokenizer.__name__:
            return MTASentencePieceTokenizer.from_pretrained(path)
    elif path.exists() and path.is_dir():
        raise FileNotFoundError(f"{path}: no tokenizer_config.json; not a saved tokenizer directory")
    return AutoTokenizer.from_pretrained(str(name_or_path))


FINGERPRINT_KEY = "tokenizer_sha256"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the tokenizer's vocabulary (token → id): two tokenizers with one fingerprint encode text alike."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, export_dir: str | Path, what: str) -> None:
    """Refuse (ValueError) ``tokenizer`` when the export at ``export_dir`` recorded another one (exports written
    before fingerprints were recorded are not checked)."""
    tasks = Path(export_dir) / "tasks.json"
    recorded = json.loads(tasks.read_text()).get(FINGERPRINT_KEY) if tasks.is_file() else None
    if recorded is not None and recorded != tokenizer_fingerprint(tokenizer):
        raise ValueError(
            f"{what}: not the tokenizer the model at {export_dir} was trained with (its vocabulary "
            f"differs from the one recorded in {tasks}); use the export's own tokenizer files"
        )
