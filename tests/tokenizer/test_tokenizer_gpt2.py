"""Tests for GPT-2's tokenizer built offline from the bundled vocabulary."""

import pytest

from lmforge.tokenizer.base import EOT, read_meta
from lmforge.tokenizer.gpt2 import ASSETS_DIR, GPT2Tokenizer
from lmforge.tokenizer.hf import load_hf_tokenizer
from tests.testdata import SHAKESPEARE

CHECK_TEXT = "Hello world, I HAD always thought Jack Gisburn"
CHECK_IDS = [15496, 995, 11, 314, 367, 2885, 1464, 1807, 3619, 402, 271, 10899]


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def test_bundled_files_and_licence_are_present():
    for name in ("encoder.json", "vocab.bpe", "LICENSE"):
        assert (ASSETS_DIR / name).is_file()
    assert "OpenAI" in (ASSETS_DIR / "LICENSE").read_text(encoding="utf-8")


def test_matches_gpt2_check_value(gpt2):
    assert gpt2.encode(CHECK_TEXT) == CHECK_IDS
    assert gpt2.decode(CHECK_IDS) == CHECK_TEXT


def test_vocab_size_and_end_of_text(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_id == 50256
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.decode([50256]) == EOT


def test_end_of_text_string_in_text_is_not_the_special_token(gpt2):
    ids = gpt2.encode(f"a{EOT}b")
    assert 50256 not in ids
    assert gpt2.decode(ids) == f"a{EOT}b"


def test_tiny_shakespeare_token_count(gpt2):
    assert len(gpt2.encode(SHAKESPEARE.read_text(encoding="utf-8"))) == 338_025


def test_unicode_round_trips(gpt2):
    text = "naïve 😀 \x00\r\n 中文"
    assert gpt2.decode(gpt2.encode(text)) == text


def test_saved_folder_loads_back_and_is_a_hugging_face_folder(gpt2, tmp_path):
    gpt2.save(tmp_path)
    assert read_meta(tmp_path)["kind"] == "gpt2"
    assert isinstance(GPT2Tokenizer.load(tmp_path), GPT2Tokenizer)
    as_hf = load_hf_tokenizer(tmp_path / "tokenizer.json")
    assert as_hf.vocab_size == 50257
    assert as_hf.eot_id == 50256
    text = "It's 2024: they'll say   \"hello\"\n\nagain!  "
    assert as_hf.encode(CHECK_TEXT + text) == gpt2.encode(CHECK_TEXT + text)
