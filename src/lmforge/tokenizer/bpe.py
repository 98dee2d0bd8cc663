"""Training a byte-level BPE (byte-pair encoding) tokenizer on the user's own documents.

BPE starts from the 256 possible bytes and repeatedly merges the most frequent pair
of adjacent tokens into a new token, until the vocabulary has the requested size.
Common words end up as single tokens, so a text needs far fewer tokens than bytes.
Because all 256 bytes stay in the vocabulary, any text (emoji included) can be encoded.
The heavy lifting is done by the Rust `tokenizers` library.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from lmforge.tokenizer.base import EOT
from lmforge.tokenizer.hf import HFTokenizer, use_byte_level

BYTE_COUNT = 256
MIN_VOCAB_SIZE = BYTE_COUNT + 1  # every byte, plus the end-of-text token


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE with `vocab_size` tokens (fewer if the texts run out of pairs to merge)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"BPE vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + end-of-text), got {vocab_size}."
        )
    backend = use_byte_level(tokenizers.Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        # Without this, bytes absent from the training text could not be encoded later.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # train_from_iterator streams the texts, so corpora larger than memory are fine.
    backend.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(backend, EOT, kind="bpe")
