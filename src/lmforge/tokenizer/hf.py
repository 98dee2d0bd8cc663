"""Tokenizers backed by the Hugging Face `tokenizers` library, and loading them from disk.

`HFTokenizer` wraps a `tokenizers.Tokenizer`. It serves both the BPE that lmforge
trains itself (kind "bpe") and any tokenizer a user brings from the Hugging Face
ecosystem (kind "hf"), which can come as a `tokenizer.json`, as `vocab.json` +
`merges.txt`, or as GPT-2's original `encoder.json` + `vocab.bpe`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from lmforge.tokenizer.base import EOT, Tokenizer, read_meta

TOKENIZER_JSON = "tokenizer.json"

VOCAB_AND_MERGES_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
"""The two ways a byte-level BPE is stored as a vocabulary file plus a merge list."""

CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
"""Hugging Face files that may name the end-of-sequence token as "eos_token"."""

COMMON_EOS_TOKENS = ("</s>", "<|im_end|>", "<|end_of_text|>", "<eos>")
"""End-of-sequence tokens of popular model families, tried when no config names one."""


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind the lmforge interface."""

    def __init__(self, backend: tokenizers.Tokenizer, eot_token: str, kind: str = "hf") -> None:
        eot_id = backend.token_to_id(eot_token)
        if eot_id is None:
            raise ValueError(f"The end-of-text token {eot_token!r} is not in this tokenizer's vocabulary.")
        # Registering the token as special makes decode print it verbatim and saves it in tokenizer.json.
        backend.add_special_tokens([eot_token])
        # Documents are plain data: a literal "<|endoftext|>" inside one must be encoded
        # as ordinary text, never as the real end-of-text id that separates documents.
        backend.encode_special_tokens = True
        self.kind = kind
        self._backend = backend
        self._eot_token = eot_token
        self._eot_id = eot_id
        # Ids need not be contiguous, so the embedding must cover the largest one.
        self._vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        """Rebuild a tokenizer from a folder written by `save`."""
        meta = read_meta(directory)
        backend = tokenizers.Tokenizer.from_file(str(Path(directory) / TOKENIZER_JSON))
        return cls(backend, meta["eot_token"], kind=meta["kind"])

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def special_tokens(self) -> dict[str, int]:
        added = self._backend.get_added_tokens_decoder()
        specials = {token.content: token_id for token_id, token in added.items() if token.special}
        return dict(sorted(specials.items(), key=lambda item: item[1]))

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: no BOS/EOS from the tokenizer's post-processor;
        # lmforge places the end-of-text token between documents itself.
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        directory = self._write_meta(directory, eot_token=self._eot_token)
        self._backend.save(str(directory / TOKENIZER_JSON))


def use_byte_level(backend: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Make `backend` work on UTF-8 bytes, GPT-2 style, so that any text can be encoded."""
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_level_bpe_from_files(vocab_path: str | Path, merges_path: str | Path) -> tokenizers.Tokenizer:
    """Build a byte-level BPE from a vocabulary JSON file and a merge list (GPT-2's format)."""
    return use_byte_level(tokenizers.Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path))))


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """Load a Hugging Face tokenizer from a folder or from a tokenizer.json file."""
    path = Path(path)
    backend = _read_backend(path)
    config_folder = path.parent if path.is_file() else path
    return HFTokenizer(backend, _find_eot_token(backend, config_folder))


def _read_backend(path: Path) -> tokenizers.Tokenizer:
    """Read whichever tokenizer files `path` is or holds."""
    if path.is_dir() and (path / TOKENIZER_JSON).is_file():
        return _read_tokenizer_json(path / TOKENIZER_JSON)
    if path.is_file():
        return _read_tokenizer_json(path)
    for vocab_name, merges_name in VOCAB_AND_MERGES_FILES:
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            return byte_level_bpe_from_files(path / vocab_name, path / merges_name)
    raise ValueError(
        f"No tokenizer found in {path}: expected tokenizer_meta.json (saved by lmforge), tokenizer.json, "
        "vocab.json + merges.txt, or encoder.json + vocab.bpe."
    )


def _read_tokenizer_json(file: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust library raises a bare Exception for unreadable files
        raise ValueError(f"Cannot read {file} as a Hugging Face tokenizer.json: {error}") from error


def _find_eot_token(backend: tokenizers.Tokenizer, config_folder: Path) -> str:
    """Pick the token that marks the end of a document, preferring GPT-2's, then the configured one."""
    candidates = [EOT, *_configured_eos_tokens(config_folder), *COMMON_EOS_TOKENS]
    for token in candidates:
        if backend.token_to_id(token) is not None:
            return token
    raise ValueError(
        f"The tokenizer in {config_folder} has no end-of-text token: it has no {EOT!r}, no eos_token in "
        f"{' or '.join(CONFIG_FILES)}, and none of {', '.join(COMMON_EOS_TOKENS)}. "
        'Add {"eos_token": "<the token that ends a document>"} to tokenizer_config.json.'
    )


def _configured_eos_tokens(config_folder: Path) -> list[str]:
    """The eos_token named in the folder's Hugging Face config files, if any."""
    tokens = []
    for name in CONFIG_FILES:
        file = config_folder / name
        if not file.is_file():
            continue
        eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token")
        # Newer files store the token as a dict like {"content": "</s>", "special": true, ...}.
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            tokens.append(eos)
    return tokens
