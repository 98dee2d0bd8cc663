"""The interface every lmforge tokenizer implements, and the metadata file it saves.

A tokenizer turns text into a list of integer ids and back. The training code only
talks to this interface, so a model can be trained with any of the tokenizers
(character-level, a freshly trained BPE, GPT-2's BPE, or a Hugging Face one).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EOT = "<|endoftext|>"
"""End-of-text token, placed between documents so the model learns where one ends."""

META_FILENAME = "tokenizer_meta.json"
"""Written by every `Tokenizer.save`; its "kind" field says which class loads the folder."""


class Tokenizer(abc.ABC):
    """Maps text to token ids and back."""

    kind: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding must be at least this big)."""

    @property
    @abc.abstractmethod
    def eot_id(self) -> int:
        """Id of the end-of-text token."""

    @property
    @abc.abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token strings and their ids."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Encode plain text. Special-token strings inside `text` are encoded as ordinary text."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode several texts; subclasses override this with their library's parallel version."""
        return [self.encode(text) for text in texts]

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Turn ids back into text (special tokens appear as their strings)."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the files needed to rebuild this tokenizer with `load_tokenizer(directory)`."""

    def _write_meta(self, directory: str | Path, **fields: Any) -> Path:
        """Create `directory`, write tokenizer_meta.json in it and return it as a Path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, **fields}
        (directory / META_FILENAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read the tokenizer_meta.json that `Tokenizer.save` wrote into `directory`."""
    return json.loads((Path(directory) / META_FILENAME).read_text(encoding="utf-8"))
