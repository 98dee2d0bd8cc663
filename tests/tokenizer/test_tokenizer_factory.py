"""Tests for choosing tokenizers by spec string, and for the interface all kinds share."""

import json

import pytest

from lmforge.tokenizer import EOT, Tokenizer, build_tokenizer, load_tokenizer
from lmforge.tokenizer.base import META_FILENAME

DOCUMENTS = ["It was the best of times, it was the worst of times.", "Call me Ishmael. 🐋", "Hello\tworld\n"]
SAMPLES = ["It was the best of times", "", "Ishmael. 🐋\n", f"a literal {EOT} inside"]


def make(spec: str) -> Tokenizer:
    return build_tokenizer(spec, texts=lambda: iter(DOCUMENTS + [EOT]), vocab_size=300)


@pytest.fixture(scope="module", params=["char", "bpe", "gpt2"])
def tokenizer(request) -> Tokenizer:
    return make(request.param)


def test_spec_names_the_kind(tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.special_tokens[EOT] == tokenizer.eot_id
    assert 0 <= tokenizer.eot_id < tokenizer.vocab_size


def test_round_trip(tokenizer):
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_equals_encode_one_by_one(tokenizer):
    assert tokenizer.encode_batch(SAMPLES) == [tokenizer.encode(text) for text in SAMPLES]


def test_end_of_text_string_is_never_the_end_of_text_id(tokenizer):
    assert tokenizer.eot_id not in tokenizer.encode(EOT)


def test_saved_folder_loads_as_a_path_spec_with_identical_ids(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert json.loads((tmp_path / META_FILENAME).read_text())["kind"] == tokenizer.kind
    for loaded in (load_tokenizer(tmp_path), build_tokenizer(str(tmp_path))):
        assert (type(loaded), loaded.kind) == (type(tokenizer), tokenizer.kind)
        assert (loaded.vocab_size, loaded.eot_id) == (tokenizer.vocab_size, tokenizer.eot_id)
        assert loaded.encode_batch(SAMPLES) == tokenizer.encode_batch(SAMPLES)


@pytest.mark.parametrize("spec", ["char", "bpe"])
def test_texts_may_be_a_generator_function(spec):
    def texts():
        yield from DOCUMENTS

    tokenizer = build_tokenizer(spec, texts, vocab_size=300)
    assert tokenizer.decode(tokenizer.encode(DOCUMENTS[1])) == DOCUMENTS[1]


def test_unknown_spec_names_the_choices():
    with pytest.raises(ValueError, match="'char', 'bpe', 'gpt2'") as error:
        build_tokenizer("sentencepiece")
    assert "sentencepiece" in str(error.value)


@pytest.mark.parametrize("spec", ["char", "bpe"])
def test_trained_kinds_need_texts(spec):
    with pytest.raises(ValueError, match="texts="):
        build_tokenizer(spec)


def test_loading_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_tokenizer(tmp_path / "missing")


def test_unknown_kind_in_meta_is_an_error(tmp_path):
    (tmp_path / META_FILENAME).write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(ValueError, match="wordpiece"):
        load_tokenizer(tmp_path)
