"""Batches of training examples cut from a prepared split's token file.

Each example is a window of `block_size + 1` consecutive tokens: the model reads the first
`block_size` (x) and learns to predict each next one (y, the same window shifted by one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmforge.data.shards import open_tokens


class TokenBatches:
    """Batches of (x, y) int64 tensors of shape (batch_size, block_size), y = x shifted by one, from one split.

    Every epoch cuts the tokens into non-overlapping windows starting at a random offset and visits
    them in a shuffled order. Offset and order come from a generator seeded with (seed, epoch), so the
    batch at any (epoch, index) is fixed and a resumed run sees exactly what an uninterrupted one would.
    With several processes (`world_size` > 1), rank r takes batches r, r + world_size, ...
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        block_size: int,
        batch_size: int,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_positive(block_size=block_size, batch_size=batch_size, world_size=world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.split = split
        self.tokens = open_tokens(data_dir, split)
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0
        # Counted for the largest possible offset (block_size - 1), so every epoch has the same length.
        self.windows_per_epoch = max(len(self.tokens) - block_size, 0) // block_size
        self.batches_per_epoch = self.windows_per_epoch // batch_size // world_size
        self._cached_order: tuple[int, int, np.ndarray] | None = None  # (epoch, offset, window order)

    def split_across(self, rank: int, world_size: int) -> "TokenBatches":
        """Make this stream one process's share of a distributed run (as rank/world_size at construction)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = self.windows_per_epoch // self.batch_size // world_size
        return self

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch; after the last batch of an epoch the next epoch begins."""
        self._check_enough_tokens()
        offset, order = self._epoch_order()
        first = (self.index * self.world_size + self.rank) * self.batch_size
        window_starts = offset + order[first : first + self.batch_size] * self.block_size
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return self._read_windows(window_starts)

    def _check_enough_tokens(self) -> None:
        if self.batches_per_epoch == 0:
            needed = (self.batch_size * self.world_size + 1) * self.block_size
            raise ValueError(
                f"the {self.split} split has {len(self.tokens)} tokens, too few for one batch of "
                f"{self.batch_size} x {self.block_size} tokens per rank (at least {needed} needed); "
                "use a smaller block_size or batch_size, or add more data"
            )

    def _epoch_order(self) -> tuple[int, np.ndarray]:
        """This epoch's random window offset and shuffled window order (computed once per epoch)."""
        if self._cached_order is None or self._cached_order[0] != self.epoch:
            generator = np.random.default_rng([self.seed, self.epoch])
            offset = int(generator.integers(self.block_size))
            self._cached_order = (self.epoch, offset, generator.permutation(self.windows_per_epoch))
        _, offset, order = self._cached_order
        return offset, order

    def _read_windows(self, window_starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-index into the memmap reads every window at once: rows are windows, columns positions.
        positions = window_starts[:, None] + np.arange(self.block_size + 1)
        windows = torch.from_numpy(self.tokens[positions].astype(np.int64))
        # contiguous() so callers can .view() the tensors (e.g. flattening targets for the loss).
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        """Position in the data stream, for checkpoints."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by `state_dict`."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < max(self.batches_per_epoch, 1):
            raise ValueError(
                f"cannot resume at epoch {epoch}, batch {index}: an epoch has {self.batches_per_epoch} batches; "
                "resume with the same data, block_size and batch_size as the checkpoint (the Trainer converts the "
                "position when only the number of processes changed)"
            )
        self.epoch, self.index = epoch, index

    @property
    def epoch_progress(self) -> float:
        """Epochs completed so far, fractional (e.g. 2.5 = halfway through the third epoch)."""
        return self.epoch + self.index / max(self.batches_per_epoch, 1)

    def _eval_window_count(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.block_size

    def eval_batch_count(self) -> int:
        """How many batches eval_batches() yields without a limit (the last one may be smaller)."""
        return -(-self._eval_window_count() // self.batch_size)  # ceiling division

    def eval_batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Windows of the split, batched: the same batches on every call.

        All of the split's windows, in order, when `max_batches` is None or covers them (the last batch
        may be smaller). A partial evaluation of `max_batches` batches takes its windows at even strides
        from the start to the end of the split instead of the first ones, so that it sees every part of
        it: the first windows alone would be the first few documents, and their loss that of those.
        """
        window_count = self._eval_window_count()
        if max_batches is None or max_batches >= self.eval_batch_count():
            windows = np.arange(window_count)
        else:
            wanted = max_batches * self.batch_size
            windows = np.arange(wanted) * window_count // wanted
        for start in range(0, len(windows), self.batch_size):
            yield self._read_windows(windows[start:start + self.batch_size] * self.block_size)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
