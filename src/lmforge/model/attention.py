"""Causal self-attention with multi-head (MHA) and grouped-query (GQA) variants.

Shapes: B = batch, T = time, C = n_embd, H = query heads, K = key/value heads, D = head_dim.
With K < H, each key/value head is shared by H/K query heads (grouped-query attention):
the KV projections and any KV cache shrink by H/K while quality stays close to full MHA.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import apply_rope


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        kv_width = self.n_kv_head * self.head_dim
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.k = nn.Linear(cfg.n_embd, kv_width, bias=cfg.bias)
        self.v = nn.Linear(cfg.n_embd, kv_width, bias=cfg.bias)
        self.o = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv_head != self.n_head:
            # Repeat each KV head for its group of query heads; cheap compared with the matmuls.
            repeats = self.n_head // self.n_kv_head
            k = k.repeat_interleave(repeats, dim=1)  # (B, H, T, D)
            v = v.repeat_interleave(repeats, dim=1)
        # SDPA picks a fused kernel (flash / memory-efficient on GPU, a tiled one on CPU).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.o(y))
