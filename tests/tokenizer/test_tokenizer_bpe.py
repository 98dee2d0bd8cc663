"""Tests for training a byte-level BPE tokenizer."""

import pytest
import tokenizers

from lmforge.tokenizer.base import EOT, read_meta
from lmforge.tokenizer.bpe import MIN_VOCAB_SIZE, train_bpe
from lmforge.tokenizer.hf import HFTokenizer
from tests.testdata import SHAKESPEARE


# Emoji, combining marks, control characters, CRLF, scripts absent from the training text.
UNUSUAL_TEXT = "héllo 😀👍🏽 e\u0301 \x00\x01\x7f\t\r\n 中文 русский ‮ \ufeff  trailing  "


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    return text.split("\n\n")


@pytest.fixture(scope="module")
def bpe(corpus) -> HFTokenizer:
    return train_bpe(iter(corpus), vocab_size=1000)


def test_reaches_the_requested_vocab_size(bpe):
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 1000
    assert bpe.special_tokens == {EOT: bpe.eot_id}


def test_compresses_text_to_fewer_tokens_than_bytes(bpe, corpus):
    text = "\n\n".join(corpus[:200])
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) / 2


def test_tiny_corpus_stops_below_the_requested_size():
    tokenizer = train_bpe(["abab abab"], vocab_size=4096)
    assert MIN_VOCAB_SIZE <= tokenizer.vocab_size < 300


def test_any_unicode_round_trips(bpe):
    assert bpe.decode(bpe.encode(UNUSUAL_TEXT)) == UNUSUAL_TEXT


def test_end_of_text_string_in_text_is_not_the_special_token(bpe):
    ids = bpe.encode(f"end{EOT}start")
    assert bpe.eot_id not in ids
    assert bpe.decode(ids) == f"end{EOT}start"
    assert bpe.decode([bpe.eot_id]) == EOT


def test_too_small_vocab_size_is_an_error():
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(["hello"], vocab_size=100)


def test_saved_tokenizer_json_is_a_plain_hugging_face_file(bpe, tmp_path):
    bpe.save(tmp_path)
    assert read_meta(tmp_path) == {"kind": "bpe", "eot_token": EOT}
    plain = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "Wherefore art thou, Romeo?"
    assert plain.encode(text).ids == bpe.encode(text)
    assert plain.decode(plain.encode(UNUSUAL_TEXT).ids) == UNUSUAL_TEXT


def test_save_and_load_keep_kind_and_ids(bpe, tmp_path):
    bpe.save(tmp_path)
    loaded = HFTokenizer.load(tmp_path)
    assert loaded.kind == "bpe"
    assert loaded.eot_id == bpe.eot_id
    assert loaded.encode(UNUSUAL_TEXT) == bpe.encode(UNUSUAL_TEXT)
