"""Scoring a language model on held-out text: mean loss per token, perplexity and next-token accuracy.

The text is cut into non-overlapping windows of `block_size + 1` tokens; in every window the model
reads the first `block_size` tokens and each position is scored on the token that follows it. Every
window starts with an empty context, so its first positions are harder to predict than text in the
middle of a long document: numbers from windows of different sizes are not comparable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.loader import TokenBatches
from lmforge.data.prepare import ensure_prepared
from lmforge.data.shards import SPLITS, is_prepared, read_meta
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.metrics import perplexity
from lmforge.train.objectives import IGNORE_INDEX

# Encoded by both tokenizers to check that they agree: letters, digits, punctuation, white space and
# characters outside ASCII, where tokenizers trained on different text most often differ.
TOKENIZER_PROBE = "The quick brown fox jumps over the lazy dog.\n\tdef f(x): return x ** 2  # 0123456789 é € 日本"


@dataclass
class EvalResult:
    loss: float                # mean cross-entropy per scored token, in nats
    perplexity: float | None   # exp(loss); None if it overflows a float
    accuracy: float            # share of positions whose most likely token is the actual next token
    tokens: int                # positions scored


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: str | torch.device) -> EvalResult:
    """Score `model` on (x, y) batches: y[b, t] is the token that follows x[b, t] (IGNORE_INDEX = skip)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, tokens = 0.0, 0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()  # fp32: log-softmax over a large vocabulary loses precision in bf16
            scored = y != IGNORE_INDEX
            loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                        reduction="sum").item()
            correct += int(((logits.argmax(dim=-1) == y) & scored).sum())
            tokens += int(scored.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("nothing to evaluate: the batches hold no target tokens")
    loss = loss_sum / tokens
    return EvalResult(loss=loss, perplexity=perplexity(loss), accuracy=correct / tokens, tokens=tokens)


def _split_names(split: str) -> tuple[str, ...]:
    """The splits that `split` ("train", "val" or "all") stands for."""
    if split == "all":
        return SPLITS
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    return (split,)


def heldout_batches(data_dir: str | Path, split: str, block_size: int, batch_size: int,
                    max_batches: int | None = None) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """Batches of consecutive windows over a prepared dataset's split(s), and how many there will be.

    "all" reads train, then val. Windows never cross from one split file into the other.
    """
    loaders = [TokenBatches(data_dir, name, block_size, batch_size) for name in _split_names(split)]
    count = sum(loader.eval_batch_count() for loader in loaders)
    if max_batches is not None:
        count = min(count, max_batches)
    if count == 0:
        tokens = sum(len(loader.tokens) for loader in loaders)
        raise ValueError(f"the {split} split of {data_dir} has {tokens:,} tokens, too few to evaluate: one window "
                         f"needs {block_size + 1:,} (the model's block_size + 1)")
    batches = itertools.chain.from_iterable(loader.eval_batches() for loader in loaders)
    return itertools.islice(batches, count), count


def check_same_tokenizer(data_dir: str | Path, tokenizer: Tokenizer) -> None:
    """Raise ValueError unless the prepared dataset was tokenized like `tokenizer` would tokenize it.

    Token ids only mean something to the tokenizer that made them: scoring a model on another
    tokenizer's ids gives numbers that look plausible and mean nothing.
    """
    data_vocab = read_meta(data_dir)["vocab_size"]
    if data_vocab != tokenizer.vocab_size:
        raise ValueError(f"{data_dir} was tokenized with a vocabulary of {data_vocab:,} tokens, the checkpoint's "
                         f"tokenizer has {tokenizer.vocab_size:,}; pass the raw text files instead and they will be "
                         "tokenized with the checkpoint's tokenizer")
    if load_tokenizer(data_dir).encode(TOKENIZER_PROBE) != tokenizer.encode(TOKENIZER_PROBE):
        raise ValueError(f"{data_dir} was tokenized with a different tokenizer than the checkpoint's (same "
                         "vocabulary size, different tokens); pass the raw text files instead and they will be "
                         "tokenized with the checkpoint's tokenizer")


def heldout_dataset(sources: list[Path], ckpt_dir: str | Path, cache_dir: str | Path) -> tuple[Path, str]:
    """The prepared dataset to score a checkpoint on, and the split to score by default.

    A prepared folder (from `lmforge prepare`) is used as is, after checking its tokenizer, and its
    val split is the held-out text. Raw files and folders are tokenized with the checkpoint's own
    tokenizer into `cache_dir` (reused while the files are unchanged), all of it into train.
    """
    if len(sources) == 1 and is_prepared(sources[0]):
        check_same_tokenizer(sources[0], load_tokenizer(ckpt_dir))
        return sources[0], "val"
    return ensure_prepared(sources, cache_dir, tokenizer=str(ckpt_dir), val_fraction=0.0), "train"
