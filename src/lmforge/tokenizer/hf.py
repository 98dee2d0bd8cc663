"""Tokenizers backed by the Hugging Face `tokenizers` library, and loading them from disk.

`HFTokenizer` wraps a `tokenizers.Tokenizer`. It serves both the BPE that lmforge
trains itself (kind "bpe") and any tokenizer a user brings from the Hugging Face
ecosystem (kind "hf"), which can come as a `tokenizer.json`, as `vocab.json` +
`merges.txt`, or as GPT-2's original `encoder.json` + `vocab.bpe`.

The other way, `save_hf_tokenizer` writes any lmforge tokenizer as the files that
`transformers.AutoTokenizer.from_pretrained` reads: `tokenizer.json` (the whole pipeline:
pre-tokenizer, model, decoder, special tokens) and `tokenizer_config.json` (which Python
class to wrap it in, and which tokens end a text). The character tokenizer becomes a BPE
with no merges: every character is its own token, anything else is the unknown token.
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

HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SPECIAL_TOKENS_MAP = "special_tokens_map.json"


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


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json so that AutoTokenizer loads `tokenizer` from `out_dir`.

    The loaded tokenizer gives the same ids for plain text. Like every Hugging Face tokenizer (and
    unlike lmforge's `encode`), it reads special-token strings written in the text as those tokens.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = exportable_backend(tokenizer)
    backend.save(str(out_dir / TOKENIZER_JSON))
    specials = _special_token_roles(tokenizer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              # Keep decode(encode(text)) == text: no tidying of spaces before punctuation.
              "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    _write_json(out_dir / HF_TOKENIZER_CONFIG, config)
    _write_json(out_dir / HF_SPECIAL_TOKENS_MAP, specials)  # read by transformers 4 versions
    return out_dir


def exportable_backend(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """A fresh `tokenizers.Tokenizer` that encodes plain text to the same ids as `tokenizer`."""
    if isinstance(tokenizer, HFTokenizer):
        # A copy: the export must not change the live tokenizer (its encode_special_tokens setting
        # is not saved in tokenizer.json anyway, so the copy reads special tokens HF's way).
        return tokenizers.Tokenizer.from_str(tokenizer._backend.to_str())
    if tokenizer.kind == "gpt2":
        from lmforge.tokenizer.gpt2 import ENCODER_JSON, VOCAB_BPE  # imported here: gpt2 imports this module

        backend = byte_level_bpe_from_files(ENCODER_JSON, VOCAB_BPE)
        backend.add_special_tokens([EOT])
        return backend
    if tokenizer.kind == "char":
        return _char_backend(tokenizer)
    raise ValueError(f"Cannot export a {tokenizer.kind!r} tokenizer to Hugging Face files.")


def _char_backend(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """The character tokenizer as a BPE without merges: each character is looked up alone."""
    from lmforge.tokenizer.char import REPLACEMENT_CHARACTER, UNK  # imported here, as for gpt2

    # With no pre-tokenizer the whole text is one "word", which BPE splits into characters;
    # with no merges to apply, each character keeps its own id (or the unknown token's).
    vocab = {char: token_id for token_id, char in enumerate(tokenizer.chars)} | tokenizer.special_tokens
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.add_special_tokens(list(tokenizer.special_tokens))
    # Decode as lmforge does: characters joined with nothing between them, unknowns shown as U+FFFD.
    backend.decoder = decoders.Sequence([decoders.Replace(UNK, REPLACEMENT_CHARACTER), decoders.Fuse()])
    return backend


def _special_token_roles(tokenizer: Tokenizer) -> dict[str, str]:
    """bos/eos/unk entries of tokenizer_config.json: lmforge's one end-of-text token opens and ends texts."""
    by_id = {token_id: token for token, token_id in tokenizer.special_tokens.items()}
    eot = by_id[tokenizer.eot_id]
    roles = {"bos_token": eot, "eos_token": eot}
    if tokenizer.kind == "char":
        from lmforge.tokenizer.char import UNK

        roles["unk_token"] = UNK
    return roles


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
