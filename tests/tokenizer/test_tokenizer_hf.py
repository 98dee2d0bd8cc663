"""Tests for loading Hugging Face tokenizers (tokenizer.json, vocab.json + merges.txt)."""

import json
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lmforge.tokenizer.base import EOT
from lmforge.tokenizer.hf import HFTokenizer, load_hf_tokenizer

DOCUMENTS = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog"] * 20
EOS = "<|doc_end|>"  # deliberately not one of the names lmforge guesses on its own


def external_tokenizer(special_tokens: list[str]) -> tokenizers.Tokenizer:
    """A byte-level BPE as another project would ship it, with a post-processor that adds BOS."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(DOCUMENTS, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return backend


def write_folder(folder: Path, backend: tokenizers.Tokenizer, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_eos_named_in_tokenizer_config_becomes_end_of_text(tmp_path):
    backend = external_tokenizer(["<s>", EOS])
    folder = write_folder(tmp_path / "hf", backend, {"eos_token": EOS})
    tokenizer = load_hf_tokenizer(folder)
    assert tokenizer.kind == "hf"
    assert tokenizer.eot_id == backend.token_to_id(EOS)
    assert tokenizer.special_tokens == {"<s>": 0, EOS: 1}
    assert tokenizer.vocab_size == backend.get_vocab_size()


def test_encode_adds_no_bos_and_round_trips(tmp_path):
    backend = external_tokenizer(["<s>", EOS])
    tokenizer = load_hf_tokenizer(write_folder(tmp_path, backend, {"eos_token": EOS}))
    text = "the cat ate a bone 😀"
    assert backend.encode(text).ids[0] == backend.token_to_id("<s>")
    assert tokenizer.encode(text) == backend.encode(text).ids[1:]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_eos_as_dict_in_special_tokens_map(tmp_path):
    folder = write_folder(tmp_path, external_tokenizer(["<s>", EOS]))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": EOS}}), encoding="utf-8")
    assert load_hf_tokenizer(folder).eot_id == 1


def test_tokenizer_json_file_path_uses_the_config_beside_it(tmp_path):
    folder = write_folder(tmp_path, external_tokenizer(["<s>", EOS]), {"eos_token": EOS})
    assert load_hf_tokenizer(folder / "tokenizer.json").eot_id == 1


def test_end_of_text_is_preferred_and_common_eos_names_are_guessed(tmp_path):
    with_eot = load_hf_tokenizer(write_folder(tmp_path / "a", external_tokenizer(["<s>", "</s>", EOT])))
    assert with_eot.eot_id == 2
    with_eos = load_hf_tokenizer(write_folder(tmp_path / "b", external_tokenizer(["<s>", "</s>"])))
    assert with_eos.eot_id == 1


def test_missing_end_of_text_is_an_error_that_explains_the_fix(tmp_path):
    folder = write_folder(tmp_path, external_tokenizer(["<s>"]))
    with pytest.raises(ValueError, match="eos_token"):
        load_hf_tokenizer(folder)


def test_vocab_json_and_merges_txt_folder(tmp_path):
    backend = external_tokenizer(["<s>", EOT])
    backend.model.save(str(tmp_path))  # writes vocab.json and merges.txt
    tokenizer = load_hf_tokenizer(tmp_path)
    text = "the dog sat on the cat"
    assert tokenizer.encode(text) == backend.encode(text).ids[1:]
    assert tokenizer.eot_id == backend.token_to_id(EOT)
    assert tokenizer.decode([tokenizer.eot_id]) == EOT


def test_folder_without_tokenizer_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_hf_tokenizer(tmp_path)


def test_unreadable_tokenizer_json_is_an_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="Cannot read"):
        load_hf_tokenizer(tmp_path)


def test_save_and_load_keep_the_end_of_text_token(tmp_path):
    tokenizer = load_hf_tokenizer(write_folder(tmp_path / "in", external_tokenizer(["<s>", EOS]), {"eos_token": EOS}))
    tokenizer.save(tmp_path / "out")
    loaded = HFTokenizer.load(tmp_path / "out")
    assert (loaded.kind, loaded.eot_id) == ("hf", tokenizer.eot_id)
    assert loaded.encode("a mat and a bone") == tokenizer.encode("a mat and a bone")
