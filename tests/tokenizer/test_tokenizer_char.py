"""Tests for the character-level tokenizer."""

import pytest

from lmforge.tokenizer.base import EOT, META_FILENAME, read_meta
from lmforge.tokenizer.char import REPLACEMENT_CHARACTER, UNK, CharTokenizer
from tests.testdata import SHAKESPEARE



@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


def test_tiny_shakespeare_has_65_characters_plus_two_specials(shakespeare):
    tokenizer = CharTokenizer.train([shakespeare])
    assert tokenizer.vocab_size == 67
    assert tokenizer.special_tokens == {EOT: 65, UNK: 66}
    assert tokenizer.eot_id == 65
    assert tokenizer.decode(tokenizer.encode(shakespeare)) == shakespeare


def test_ids_follow_sorted_characters():
    tokenizer = CharTokenizer.train(["cab", "bca"])
    assert tokenizer.chars == ["a", "b", "c"]
    assert tokenizer.encode("abcab") == [0, 1, 2, 0, 1]


def test_learns_from_all_documents_of_a_stream():
    tokenizer = CharTokenizer.train(iter(["ab", "xy"]))
    assert tokenizer.chars == ["a", "b", "x", "y"]


def test_unseen_characters_become_unknown_and_decode_to_replacement_character():
    tokenizer = CharTokenizer.train(["hello"])
    unk = tokenizer.special_tokens[UNK]
    # "z" is below the largest known code point, the emoji far above it: both are unknown.
    assert tokenizer.encode("hez😀") == [tokenizer.encode("h")[0], tokenizer.encode("e")[0], unk, unk]
    assert tokenizer.decode(tokenizer.encode("he😀")) == "he" + REPLACEMENT_CHARACTER


def test_non_ascii_characters_round_trip():
    text = "naïve café — 日本語 😀\x00\t"
    tokenizer = CharTokenizer.train([text])
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(text)) == len(text)


def test_end_of_text_string_in_text_is_plain_characters():
    tokenizer = CharTokenizer.train([EOT])
    ids = tokenizer.encode(EOT)
    assert len(ids) == len(EOT)
    assert tokenizer.eot_id not in ids
    assert tokenizer.decode([tokenizer.eot_id]) == EOT


def test_empty_text_encodes_to_no_ids():
    assert CharTokenizer.train(["abc"]).encode("") == []


def test_training_on_empty_texts_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train(["", ""])


def test_duplicate_characters_are_rejected():
    with pytest.raises(ValueError, match="twice"):
        CharTokenizer(["a", "a"])


def test_save_and_load_give_identical_ids(tmp_path):
    text = "To be, or not to be 😀"
    tokenizer = CharTokenizer.train([text])
    tokenizer.save(tmp_path)
    loaded = CharTokenizer.load(tmp_path)
    assert read_meta(tmp_path)["kind"] == "char"
    assert (tmp_path / META_FILENAME).is_file()
    assert loaded.chars == tokenizer.chars
    assert loaded.encode(text + "?") == tokenizer.encode(text + "?")
