"""The key/value cache: what makes generating one token cost one position's work, not the whole context's.

Generating token t needs attention over the keys and values of tokens 0..t. They do not change once
computed (causal attention: later tokens never influence earlier ones), so we compute each position's
keys and values once, keep them here, and feed the model only the new token at every step.

One KVCache per attention layer, preallocated for `max_len` positions so that a step writes into it
instead of growing a tensor. It stores the key/value heads (K), not the query heads (H): with
grouped-query attention that is H/K times less memory.
Shapes: B = batch, K = key/value heads, L = max_len, T = new positions, D = head_dim.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    """Keys and values of one attention layer for every position seen so far."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (batch, n_kv_head, max_len, head_dim)  # (B, K, L, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled so far (the same for every row: batches are left-padded)

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    @property
    def is_full(self) -> bool:
        return self.length == self.max_len

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys/values (B, K, T, D) of T new positions; return those of all positions so far."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions do not fit in {self.max_len}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, K, length, D): views, no copy

    def clear(self) -> None:
        """Forget every position (the memory stays allocated for reuse)."""
        self.length = 0


def make_caches(cfg: ModelConfig, batch: int, max_len: int | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> list[KVCache]:
    """One empty cache per Transformer block; max_len defaults to the context length (block_size)."""
    max_len = cfg.block_size if max_len is None else max_len
    return [KVCache(batch, cfg.kv_heads, max_len, cfg.head_dim, dtype, device) for _ in range(cfg.n_layer)]
