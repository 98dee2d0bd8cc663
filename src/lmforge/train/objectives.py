"""Training objectives: what loss a batch gives. The loop is the same for all of them.

An objective returns the *sum* of per-token losses and leaves the division to the loop, which
divides by the number of target tokens in the whole accumulated batch. That way k micro-batches of
size B give exactly the gradient of one batch of size kB, even when micro-batches hold different
numbers of real (non-padding, label != -100) tokens.

A batch is a tuple of tensors whose last one holds the targets; the loop calls
`loss_fn(model, *batch)` and counts the targets of `batch[-1]` (those not equal to IGNORE_INDEX).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..data.sft import packed_attention_mask, packed_positions
from ..model.chunked_loss import IGNORE_INDEX  # label of positions that do not count (padding, masked prompts)


def statistics_left_out(loss_fn) -> contextlib.AbstractContextManager:
    """A block whose batches an objective's own statistics (DPO rewards, GRPO KL: `loss_fn.stats`) leave out:
    passes that are not part of training or validation, such as the precision probe's or a padding repeat."""
    stats = getattr(loss_fn, "stats", None)
    return stats.ignoring() if stats is not None else contextlib.nullcontext()


def lm_loss_sum(model: torch.nn.Module, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """Next-token prediction: cross-entropy of the logits at each position against the next token.

    rest is (y,) for ordinary batches, or (segment_ids, y) for rows packing several examples.
    """
    if len(rest) == 2:
        return packed_lm_loss_sum(model, x, *rest)
    (y,) = rest
    # The model computes the loss itself, in chunks of rows, without holding all (B, T, V) logits at once.
    # (Its softmax is in fp32 even under autocast: a log-softmax over a large vocabulary loses precision in bf16.)
    return model(x, targets=y)


def packed_lm_loss_sum(model: torch.nn.Module, x: torch.Tensor, segment_ids: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
    """Next-token loss on rows that pack several examples (segment_ids numbers them, 0 = padding).

    Each token attends only to earlier tokens of its own example and positions restart at 0 with
    every example, so a packed example gets exactly the logits it would get alone.
    """
    positions = packed_positions(segment_ids)
    return model(x, positions, attn_mask=packed_attention_mask(segment_ids), targets=y)


def count_targets(y: torch.Tensor) -> torch.Tensor:
    return (y != IGNORE_INDEX).sum()


def classification_loss(class_weights: torch.Tensor | list[float] | None = None):
    """Loss function for classification batches (x, last_index, label): summed cross-entropy over classes.

    With class weights (for unequal classes) each example's loss is multiplied by its class's weight,
    so a rare class counts as much in the gradient as a frequent one.
    """
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def loss_sum(model: torch.nn.Module, x: torch.Tensor, last_index: torch.Tensor, label: torch.Tensor):
        logits = model(x, last_index)  # (B, num_classes)
        w = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(logits.float(), label, weight=w, reduction="sum")

    return loss_sum
