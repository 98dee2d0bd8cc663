"""Tokenizers written as Hugging Face files load in transformers with the same ids, and the other way round."""

import json
import shutil

import pytest

from lmforge.tokenizer import CharTokenizer, GPT2Tokenizer, load_tokenizer, train_bpe
from lmforge.tokenizer.base import EOT
from lmforge.tokenizer.char import UNK
from lmforge.tokenizer.gpt2 import ENCODER_JSON, VOCAB_BPE
from lmforge.tokenizer.hf import save_hf_tokenizer

transformers = pytest.importorskip("transformers")

# Doubled spaces, tabs, trailing blanks, non-ASCII and an emoji: where byte-level splitting rules differ.
TEXT = "Hello  world!\n\tThe quick brown fox \u2014 jumps, \u00e9moji \U0001f642 over 12345 dogs.   \n\n  end  "
TRAINING = ["hello world, this is a test of bpe. The quick brown fox jumps over the lazy dog."] * 20


def exported_tokenizers():
    return {
        "bpe": train_bpe(TRAINING, 300),
        "gpt2": GPT2Tokenizer(),
        # Leave out two characters of TEXT so the unknown token is exercised too.
        "char": CharTokenizer(sorted(set(TEXT) - {"\u00e9", "\U0001f642"})),
    }


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_export_loads_with_autotokenizer_giving_the_same_ids(tmp_path, kind):
    tokenizer = exported_tokenizers()[kind]
    save_hf_tokenizer(tokenizer, tmp_path, model_max_length=64)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer.encode(TEXT)
    assert hf(TEXT)["input_ids"] == ids
    assert hf.encode(TEXT) == ids  # no BOS/EOS added behind our back
    assert hf.eos_token_id == tokenizer.eot_id
    assert hf.decode(ids) == tokenizer.decode(ids)
    assert hf.model_max_length == 64


def test_char_export_maps_unknown_characters_to_the_unknown_token(tmp_path):
    tokenizer = CharTokenizer(list("ab"))
    save_hf_tokenizer(tokenizer, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.encode("abz") == [0, 1, tokenizer.special_tokens[UNK]]
    assert hf.unk_token == UNK
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == EOT


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_exported_folder_loads_back_into_lmforge(tmp_path, kind):
    tokenizer = exported_tokenizers()[kind]
    save_hf_tokenizer(tokenizer, tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(TEXT) == tokenizer.encode(TEXT)
    assert again.eot_id == tokenizer.eot_id


def test_export_leaves_the_live_tokenizer_unchanged(tmp_path):
    tokenizer = train_bpe(TRAINING, 300)
    save_hf_tokenizer(tokenizer, tmp_path)
    # lmforge still encodes a literal end-of-text string as text, not as the separator id.
    assert tokenizer.eot_id not in tokenizer.encode(EOT)


def test_folder_saved_by_transformers_loads_with_the_same_ids(tmp_path):
    hf = transformers.GPT2Tokenizer(str(ENCODER_JSON), str(VOCAB_BPE))  # vocab and merges files, positionally
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    ours = load_tokenizer(tmp_path)
    assert ours.encode(TEXT) == hf(TEXT)["input_ids"] == GPT2Tokenizer().encode(TEXT)
    assert ours.eot_id == hf.eos_token_id


def test_vocab_and_merges_folder_loads_with_the_same_ids(tmp_path):
    """The GPT-2-style layout: vocab.json + merges.txt and a config naming the class, no tokenizer.json."""
    shutil.copy(ENCODER_JSON, tmp_path / "vocab.json")
    shutil.copy(VOCAB_BPE, tmp_path / "merges.txt")
    config = {"tokenizer_class": "GPT2Tokenizer", "eos_token": EOT, "bos_token": EOT, "unk_token": EOT}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer(tmp_path)
    assert ours.encode(TEXT) == hf(TEXT)["input_ids"] == GPT2Tokenizer().encode(TEXT)
    assert ours.eot_id == hf.eos_token_id == 50256
