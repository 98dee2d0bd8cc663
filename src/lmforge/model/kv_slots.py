"""A pool of KV-cache slots: one per sequence, each at its own length, for continuous batching.

KVCache (kv_cache.py) keeps one length for the whole batch: rows are left-padded to end together, so
a batch starts and ends as one. Continuous batching lets sequences join and leave between steps, each
at its own position, so here every slot (row of the pool) has its own length, and a forward pass over
some of the slots writes each row's new keys/values at that row's own positions.

A forward pass is described by a `SlotStep`: which slots take part, where each row's new tokens go,
and how many of the (right-padded) new tokens are real. The model sees `SlotLayer` objects, which speak
KVCache's language (`length`, `append`), so the model code needs no change.

Reading the keys back is free (a view) when the slots of a step are one contiguous range; the scheduler
keeps its decoding rows in slots 0..d-1 for that reason. Other steps (prefill chunks) gather a copy.
Shapes: N = slots in the pool, B = rows in a step, K = key/value heads, L = slot length, T = new
positions (padded), S = positions attended to, D = head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig


@dataclass
class SlotStep:
    """One forward pass over some slots: row i writes new_tokens[i] positions from starts[i] in slots[i]."""

    slots: list[int]
    starts: list[int]
    new_tokens: list[int]
    device: torch.device

    def __post_init__(self) -> None:
        self.width = max(self.new_tokens)  # T: the new tokens, right-padded to the longest row
        self.seen = max(s + n for s, n in zip(self.starts, self.new_tokens))  # S: positions any row attends to
        offsets = torch.arange(self.width)
        starts, counts = torch.tensor(self.starts), torch.tensor(self.new_tokens)
        self.is_real = offsets[None, :] < counts[:, None]  # (B, T): False on the right padding
        self.positions = starts[:, None] + offsets[None, :]  # (B, T): each row counts on from its own length
        # Where the real new keys go: (slot, position) pairs, in the row-major order of is_real's True entries.
        self._write_slots = torch.tensor(self.slots)[:, None].expand_as(self.is_real)[self.is_real].to(self.device)
        self._write_positions = self.positions[self.is_real].to(self.device)
        self._write_rows = self.is_real.to(self.device)
        lo = self.slots[0]
        self.contiguous = self.slots == list(range(lo, lo + len(self.slots)))
        self._slot_index = torch.tensor(self.slots, device=self.device)

    def model_positions(self, block_size: int) -> torch.Tensor:
        """Positions (B, T) for the model's embeddings; padding gets the last position, whose output is unused."""
        return self.positions.clamp(max=block_size - 1).to(self.device)

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, S), True where a query may attend: a row's query at position p sees its slot's keys 0..p.

        Keys past a row's own length hold an earlier sequence's leftovers or padding; only padding
        queries see them, and their outputs are thrown away. Every query sees key 0, so softmax
        never meets a row with nothing to attend to (that would give NaN)."""
        keys = torch.arange(self.seen)
        return (keys[None, None, :] <= self.positions[:, :, None]).unsqueeze(1).to(self.device)

    def last_real(self) -> torch.Tensor:
        """Index (B,) of each row's last real new token: where its next-token logits are read."""
        return (torch.tensor(self.new_tokens) - 1).to(self.device)


class SlotLayer:
    """One attention layer's view of the pool during a step: what the model calls its cache."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, step: SlotStep):
        self.k, self.v, self.step = k, v, step

    @property
    def length(self) -> int:
        # The model checks `length + T <= block_size`; with rows at different lengths, the furthest any row
        # reaches (seen) is what must fit.
        return self.step.seen - self.step.width

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the real ones of the new keys/values (B, K, T, D) into their slots; return (B, K, S, D)."""
        step = self.step
        # (B, T, K, D) rows picked by is_real -> (n_real, K, D), in the order of the write positions.
        self.k[step._write_slots, :, step._write_positions] = k.transpose(1, 2)[step._write_rows]
        self.v[step._write_slots, :, step._write_positions] = v.transpose(1, 2)[step._write_rows]
        if step.contiguous:  # decoding rows: a view, no copy
            lo = step.slots[0]
            return self.k[lo:lo + len(step.slots), :, :step.seen], self.v[lo:lo + len(step.slots), :, :step.seen]
        return self.k[step._slot_index, :, :step.seen], self.v[step._slot_index, :, :step.seen]


class SlotPool:
    """n_slots sequences' keys and values for every layer, preallocated; lengths[i] positions of slot i are filled."""

    def __init__(self, cfg: ModelConfig, n_slots: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        shape = (n_slots, cfg.kv_heads, cfg.block_size, cfg.head_dim)  # (N, K, L, D)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.lengths = [0] * n_slots
        self.block_size = cfg.block_size

    @property
    def n_slots(self) -> int:
        return len(self.lengths)

    @staticmethod
    def slot_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
        """Memory of one slot: keys and values of every layer for a whole context."""
        return 2 * cfg.n_layer * cfg.kv_heads * cfg.block_size * cfg.head_dim * dtype.itemsize

    def layers(self, step: SlotStep) -> list[SlotLayer]:
        """The per-layer caches a forward pass over `step` hands to the model."""
        return [SlotLayer(k, v, step) for k, v in zip(self.k, self.v)]

    def move(self, source: int, target: int) -> None:
        """Copy slot source's filled positions into slot target (target's old content is dropped)."""
        n = self.lengths[source]
        for k, v in zip(self.k, self.v):
            k[target, :, :n] = k[source, :, :n]
            v[target, :, :n] = v[source, :, :n]
        self.lengths[target] = n

    def swap(self, a: int, b: int) -> None:
        """Exchange two slots' contents."""
        n = max(self.lengths[a], self.lengths[b])
        for k, v in zip(self.k, self.v):
            k[[a, b], :, :n] = k[[b, a], :, :n]
            v[[a, b], :, :n] = v[[b, a], :, :n]
        self.lengths[a], self.lengths[b] = self.lengths[b], self.lengths[a]
