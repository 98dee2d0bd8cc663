"""Choosing a tokenizer from a spec string ("char", "bpe", "gpt2" or a path), and loading saved ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lmforge.tokenizer.base import META_FILENAME, Tokenizer, read_meta
from lmforge.tokenizer.bpe import train_bpe
from lmforge.tokenizer.char import CharTokenizer
from lmforge.tokenizer.gpt2 import GPT2Tokenizer
from lmforge.tokenizer.hf import HFTokenizer, load_hf_tokenizer

SPEC_CHOICES = "'char', 'bpe', 'gpt2', or the path of a tokenizer folder or tokenizer.json file"

# How to load a folder written by Tokenizer.save, by the "kind" in its tokenizer_meta.json.
LOADERS: dict[str, Callable[[Path], Tokenizer]] = {
    "char": CharTokenizer.load,
    "bpe": HFTokenizer.load,
    "hf": HFTokenizer.load,
    "gpt2": GPT2Tokenizer.load,
}


def build_tokenizer(
    spec: str, texts: Callable[[], Iterable[str]] | None = None, vocab_size: int = 4096
) -> Tokenizer:
    """Make the tokenizer named by `spec`.

    "char" and "bpe" are learned from the documents that `texts()` yields (called once);
    `vocab_size` is the size of the BPE vocabulary. "gpt2" is GPT-2's own vocabulary.
    Anything else is read as a path to a saved or Hugging Face tokenizer.
    """
    if spec == "char":
        return CharTokenizer.train(_training_texts(spec, texts))
    if spec == "bpe":
        return train_bpe(_training_texts(spec, texts), vocab_size)
    if spec == "gpt2":
        return GPT2Tokenizer()
    if Path(spec).exists():
        return load_tokenizer(spec)
    raise ValueError(f"Unknown tokenizer {spec!r}: use {SPEC_CHOICES} (no file or folder {spec!r} exists).")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a folder written by `Tokenizer.save`, or a Hugging Face tokenizer folder or tokenizer.json."""
    path = Path(directory)
    if not path.exists():
        raise ValueError(f"Cannot load a tokenizer from {path}: no such file or folder.")
    if not (path / META_FILENAME).is_file():
        return load_hf_tokenizer(path)
    kind = read_meta(path).get("kind")
    if kind not in LOADERS:
        raise ValueError(
            f"{path / META_FILENAME} names an unknown tokenizer kind {kind!r}; expected one of {sorted(LOADERS)}."
        )
    return LOADERS[kind](path)


def _training_texts(spec: str, texts: Callable[[], Iterable[str]] | None) -> Iterable[str]:
    """A fresh stream of training documents, or a clear error if none were given."""
    if texts is None:
        raise ValueError(
            f"The {spec!r} tokenizer is learned from your documents: pass texts=... to build_tokenizer, "
            "or use 'gpt2' or a saved tokenizer folder, which need no training."
        )
    return texts()
