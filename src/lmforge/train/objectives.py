"""Training objectives: what loss a batch gives. The loop is the same for all of them.

An objective returns the *sum* of per-token losses and leaves the division to the loop, which
divides by the number of target tokens in the whole accumulated batch. That way k micro-batches of
size B give exactly the gradient of one batch of size kB, even when micro-batches hold different
numbers of real (non-padding, label != -100) tokens.

A batch is a tuple of tensors whose last one holds the targets; the loop calls
`loss_fn(model, *batch)` and counts the targets of `batch[-1]` (those not equal to IGNORE_INDEX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of positions that do not count (padding, masked prompts)


def lm_loss_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token prediction: cross-entropy of the logits at each position against the next token."""
    logits = model(x)  # (B, T, V)
    # The loss is computed in fp32 even under autocast: log-softmax over a large vocabulary loses precision in bf16.
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def count_targets(y: torch.Tensor) -> torch.Tensor:
    return (y != IGNORE_INDEX).sum()
