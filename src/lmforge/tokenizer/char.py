"""Character-level tokenizer: one token per character seen in the training text.

The simplest tokenizer there is, and a good first choice for small corpora such as
tiny Shakespeare: the vocabulary is tiny, so the model's embedding table is tiny too.
Ids 0..n-1 are the sorted characters, then come the end-of-text and unknown tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lmforge.tokenizer.base import EOT, Tokenizer

UNK = "<|unk|>"
"""Stands for any character that did not occur in the training text."""

REPLACEMENT_CHARACTER = "\ufffd"
"""What `decode` shows for the unknown token (Unicode's own "unknown character" sign)."""

VOCAB_FILENAME = "char_vocab.json"


class CharTokenizer(Tokenizer):
    """Maps each known character to its own id, and every other character to `<|unk|>`."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        _check_characters(chars)
        self._chars = list(chars)
        self._eot_id = len(self._chars)
        self._unk_id = self._eot_id + 1
        self._pieces = [*self._chars, EOT, REPLACEMENT_CHARACTER]
        self._lookup = self._code_point_lookup()

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """Learn the character set from a stream of documents."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("Cannot learn a character vocabulary: the training texts are empty. Add some documents.")
        return cls(sorted(seen))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        """Rebuild a tokenizer from a folder written by `save`."""
        chars = json.loads((Path(directory) / VOCAB_FILENAME).read_text(encoding="utf-8"))
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return {EOT: self._eot_id, UNK: self._unk_id}

    @property
    def chars(self) -> list[str]:
        """The known characters, in id order."""
        return list(self._chars)

    def encode(self, text: str) -> list[int]:
        # One vectorised table lookup instead of a Python dict lookup per character:
        # UTF-32 gives one fixed-size integer (the code point) per character.
        # "surrogatepass" keeps lone surrogates (which Python strings may hold) encodable.
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        # Code points beyond the table all land on its last slot, which holds the unknown id.
        last_slot = len(self._lookup) - 1
        return self._lookup[np.minimum(code_points, last_slot)].tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return "".join([self._pieces[token_id] for token_id in ids])

    def save(self, directory: str | Path) -> None:
        directory = self._write_meta(directory)
        (directory / VOCAB_FILENAME).write_text(json.dumps(self._chars) + "\n", encoding="utf-8")

    def _code_point_lookup(self) -> np.ndarray:
        """Array indexed by code point giving the token id; unknown characters map to `<|unk|>`."""
        code_points = [ord(char) for char in self._chars]
        lookup = np.full(max(code_points) + 2, self._unk_id, dtype=np.int32)
        lookup[code_points] = np.arange(len(code_points), dtype=np.int32)
        return lookup


def _check_characters(chars: Sequence[str]) -> None:
    """Reject vocabularies that would make ids ambiguous."""
    if not chars:
        raise ValueError("A character vocabulary needs at least one character.")
    if any(len(char) != 1 for char in chars):
        raise ValueError("Every entry of a character vocabulary must be exactly one character.")
    if len(set(chars)) != len(chars):
        raise ValueError("A character vocabulary must not list the same character twice.")
