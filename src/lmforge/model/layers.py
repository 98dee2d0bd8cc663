"""Building blocks of a Transformer block: normalisation, feed-forward (MLP) and rotary positions.

Shapes: B = batch, T = time (sequence length), C = n_embd, H = heads, D = head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .linear import Linear


class RMSNorm(nn.Module):
    """Scales each vector to unit root-mean-square, then by a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


class GeluMLP(nn.Module):
    """GPT-2's feed-forward: widen, GELU, project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = Linear(cfg.n_embd, cfg.hidden_dim, bias=cfg.bias)
        self.down = Linear(cfg.hidden_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 was trained with the tanh approximation of GELU; keep it so imported weights behave the same.
        return self.dropout(self.down(F.gelu(self.up(x), approximate="tanh")))


class SwiGLUMLP(nn.Module):
    """Llama's feed-forward: a SiLU-activated gate multiplies a second projection, then project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Linear(cfg.n_embd, cfg.hidden_dim, bias=cfg.bias)
        self.up = Linear(cfg.n_embd, cfg.hidden_dim, bias=cfg.bias)
        self.down = Linear(cfg.hidden_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


def make_mlp(cfg: ModelConfig) -> nn.Module:
    return SwiGLUMLP(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)


def rope_tables(head_dim: int, max_len: int, theta: float,
                scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_len, head_dim) for rotary position embedding.

    Pair i of each head is rotated by angle pos * theta^(-2i/head_dim): low dimensions spin fast
    (fine position), high ones slowly (coarse position). We use the "rotate half" layout, pairing
    dimension i with i + head_dim/2, which is the layout Hugging Face Llama/Qwen weights expect.
    `scaling` (ModelConfig.rope_scaling) slows some rotations down; see scale_rope_frequencies.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
    if scaling is not None:
        inv_freq = scale_rope_frequencies(inv_freq, scaling)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def scale_rope_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Rotation speeds stretched for a context longer than the one the model was pretrained on.

    "linear" divides every speed by `factor`: position p then turns as far as p / factor did, so a
    4x longer context reuses the angles seen in training (at the price of finer position detail).
    "llama3" stretches only the slow pairs, whose wavelength (2*pi / speed, in tokens) is longer than
    the original context / low_freq_factor; pairs with wavelengths shorter than original context /
    high_freq_factor keep their speed (they encode local word order, which needs no stretching);
    pairs in between get a smooth blend of both.
    """
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not supported (linear and llama3 are)")
    original = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * math.pi / inv_freq
    # 0 for wavelengths >= original/low (fully stretched), 1 for <= original/high (unchanged).
    keep = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - keep) * inv_freq / factor + keep * inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, H, T, D) by the angles of its positions.

    cos/sin are (T, D) when every row has the same positions (training), or (B, 1, T, D) when each row
    has its own (a left-padded generation batch).
    """
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
