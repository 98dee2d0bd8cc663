"""GPT-2's tokenizer: the 50,257-token byte-level BPE that OpenAI trained for GPT-2.

Useful for fine-tuning GPT-2 checkpoints, or when a ready-made vocabulary is wanted.
The vocabulary files ship with lmforge (assets/gpt2/), so no download is needed.
Encoding uses `tiktoken`, which is several times faster than `tokenizers` for this.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from lmforge.tokenizer.base import EOT, Tokenizer
from lmforge.tokenizer.hf import TOKENIZER_JSON, byte_level_bpe_from_files

ASSETS_DIR = Path(__file__).parent / "assets" / "gpt2"
ENCODER_JSON = ASSETS_DIR / "encoder.json"
VOCAB_BPE = ASSETS_DIR / "vocab.bpe"

GPT2_EOT_ID = 50256

# How GPT-2 splits text into words before BPE (contractions, letters, digits, punctuation, spaces);
# merges never cross these boundaries. Same pattern as tiktoken's own "gpt2" encoding.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    """Build tiktoken's encoder from the bundled files (once per process: it takes a fraction of a second)."""
    ranks = data_gym_to_mergeable_bpe_ranks(str(VOCAB_BPE), str(ENCODER_JSON))
    return tiktoken.Encoding(
        name="gpt2", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: GPT2_EOT_ID}
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE, encoded with tiktoken."""

    kind = "gpt2"

    def __init__(self) -> None:
        self._encoding = _gpt2_encoding()

    @classmethod
    def load(cls, directory: str | Path) -> GPT2Tokenizer:
        """Nothing to read from `directory`: the vocabulary is bundled with lmforge."""
        return cls()

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return GPT2_EOT_ID

    @property
    def special_tokens(self) -> dict[str, int]:
        return {EOT: GPT2_EOT_ID}

    def encode(self, text: str) -> list[int]:
        # "ordinary" = a literal "<|endoftext|>" in the text is encoded as plain text.
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        directory = self._write_meta(directory)
        # Also write the Hugging Face form, so the folder works with `tokenizers` and `transformers`.
        backend = byte_level_bpe_from_files(ENCODER_JSON, VOCAB_BPE)
        backend.add_special_tokens([EOT])
        backend.save(str(directory / TOKENIZER_JSON))
