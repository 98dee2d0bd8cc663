"""Causal self-attention with multi-head (MHA) and grouped-query (GQA) variants.

Shapes: B = batch, T = time (new positions), S = all positions attended to (cached + new),
C = n_embd, H = query heads, K = key/value heads, D = head_dim.
With K < H, each key/value head is shared by H/K query heads (grouped-query attention):
the KV projections and any KV cache shrink by H/K while quality stays close to full MHA.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .linear import Linear
from .kv_cache import KVCache
from .layers import apply_rope


def attention_mask(n_new: int, n_keys: int, key_is_real: torch.Tensor | None = None,
                   device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask, True where a query may attend to a key: (T, S), or (B, 1, T, S) with padding.

    The T new queries are the last T of the S positions, so query i sees keys 0 .. S-T+i (causal).
    key_is_real (B, S) marks padding with False; padding keys are hidden from every query except the
    padding query itself: a query with nothing to attend to makes softmax return NaN, and a NaN
    spreads through later layers even where its attention weight is zero.
    """
    query_pos = torch.arange(n_keys - n_new, n_keys, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(n_keys, device=device)[None, :]  # (1, S)
    mask = key_pos <= query_pos  # (T, S)
    if key_is_real is None:
        return mask
    visible = key_is_real[:, None, :] | (key_pos == query_pos)  # (B, T, S)
    return (mask & visible).unsqueeze(1)  # (B, 1, T, S): the same for every head


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        kv_width = self.n_kv_head * self.head_dim
        # Qwen2 keeps biases on q/k/v while dropping every other one, hence a separate switch.
        self.q = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.has_qkv_bias)
        self.k = Linear(cfg.n_embd, kv_width, bias=cfg.has_qkv_bias)
        self.v = Linear(cfg.n_embd, kv_width, bias=cfg.has_qkv_bias)
        self.o = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        Training passes no cache and no mask: plain causal attention over x's own T positions.
        With a cache, the new keys/values are appended to it and the queries attend to all S cached
        positions, so a mask from `attention_mask` says which ones each query may see -- except for a
        single new query without padding (decoding), which sees them all and needs none.
        """
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, K, S, D): keys are cached already rotated
        # SDPA picks a fused kernel (flash / memory-efficient on GPU, a tiled one on CPU). With fewer KV
        # heads, enable_gqa lets each KV head serve its group of H/K query heads without copying it H/K times.
        # Without a mask: causal over T > 1 positions; a single query (decoding) sees every key.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.o(y))
