"""ModelConfig: every architectural choice of the Transformer, plus named presets.

One dataclass describes both families the model supports:

* GPT-2 style: learned absolute positions, LayerNorm, GELU MLP, biases, tied embeddings.
* Llama/Qwen style: rotary positions (RoPE), RMSNorm, SwiGLU MLP, grouped-query attention
  (fewer key/value heads than query heads), no biases (Qwen2 keeps biases on the query, key and
  value projections only: `qkv_bias`).

The family is not a switch: each choice is its own field, so mixtures (e.g. GPT-2 with RoPE) work.
This module imports no torch, so configs can be read and validated cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

Norm = Literal["layernorm", "rmsnorm"]
Positions = Literal["learned", "rope"]
MLPKind = Literal["gelu", "swiglu"]


@dataclass
class ModelConfig:
    """The Transformer's shape and architecture (a preset fills what you leave out)."""

    preset: str | None = field(default=None, metadata={"help": "named architecture to start from; keys set here override it"})
    vocab_size: int | None = field(default=None, metadata={"help": "embedding rows; null = the tokenizer's vocabulary size"})
    n_layer: int = field(default=4, metadata={"help": "number of Transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention (query) heads per block"})
    n_kv_head: int | None = field(default=None, metadata={"help": "key/value heads (grouped-query attention); null = n_head"})
    n_embd: int = field(default=128, metadata={"help": "model width (embedding size)"})
    block_size: int = field(default=256, metadata={"help": "context length in tokens"})
    norm: Norm = field(default="layernorm", metadata={"help": "normalisation layer"})
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon inside the norm"})
    pos: Positions = field(default="learned", metadata={"help": "position encoding: learned table or rotary (RoPE)"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    rope_scaling: dict[str, Any] | None = field(default=None, metadata={
        "help": "stretch RoPE to longer contexts, as in Hugging Face configs: {rope_type: linear, factor: F} or "
                "{rope_type: llama3, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}"})
    mlp: MLPKind = field(default="gelu", metadata={"help": "feed-forward kind"})
    mlp_hidden: int | None = field(default=None, metadata={"help": "MLP hidden width; null = 4*n_embd (gelu) or ~8/3*n_embd (swiglu)"})
    bias: bool = field(default=True, metadata={"help": "biases in linear layers and norms"})
    qkv_bias: bool | None = field(default=None, metadata={
        "help": "biases on the query/key/value projections (Qwen2: true with bias false); null = same as bias"})
    tie_embeddings: bool = field(default=True, metadata={"help": "share the token embedding with the output head"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability (0 for pretraining small data fast)"})
    fit_to_budget: bool = field(default=False, metadata={
        "help": "pick n_layer/n_embd for train.max_time: a speed probe keeps the largest GPT-2-style shape that "
                "sees ~20 tokens per parameter in the budget (train/sizing.py)"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from these weights: an lmforge checkpoint or a Hugging Face model folder"})

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        # SwiGLU has three matrices instead of two; 2/3 of 4*d keeps the parameter count of a GELU MLP
        # (the Llama paper's choice), rounded up to a multiple of 32 for friendlier matmul shapes.
        return -(-(8 * self.n_embd // 3) // 32) * 32

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head: n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head size, got n_embd/n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r}; choose one of {', '.join(sorted(PRESETS))}")


ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
"""The RoPE scaling kinds lmforge implements (layers.rope_tables), and the numbers each one needs."""


def check_rope_scaling(scaling: dict[str, Any]) -> None:
    """Raise a ValueError naming what is wrong with a `rope_scaling` mapping."""
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not supported; lmforge implements "
                         f"{', '.join(ROPE_SCALING_KEYS)}")
    missing = [key for key in ROPE_SCALING_KEYS[kind] if not isinstance(scaling.get(key), (int, float))]
    if missing:
        raise ValueError(f"rope_scaling: rope_type {kind!r} needs numbers for {', '.join(missing)}")


_GPT2 = dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, norm_eps=1e-6)

# Presets name only architecture; the tokenizer decides vocab_size (GPT-2 sizes: use data.tokenizer=gpt2).
PRESETS: dict[str, dict] = {
    # nanoGPT's "shakespeare on CPU" shape: trains in about a minute on 2 cores.
    "gpt2-tiny": dict(_GPT2, n_layer=4, n_head=4, n_embd=128, block_size=256),
    "gpt2-mini": dict(_GPT2, n_layer=6, n_head=6, n_embd=192, block_size=256),
    "gpt2-124m": dict(_GPT2, n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    # A tiny Llama: 4 query heads share 2 key/value heads (grouped-query attention).
    "llama-tiny": dict(_LLAMA, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352, block_size=256,
                       tie_embeddings=True),
    "llama-mini": dict(_LLAMA, n_layer=6, n_head=6, n_kv_head=2, n_embd=192, block_size=256, tie_embeddings=True),
}


def apply_preset(raw: dict) -> dict:
    """Fill a raw `model:` mapping from its preset; keys the user wrote win over the preset's."""
    name = raw.get("preset")
    if name is None:
        return dict(raw)
    if name not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return {**PRESETS[name], **raw}


def preset_config(name: str, **overrides) -> ModelConfig:
    """A ModelConfig built from a preset, e.g. preset_config("llama-tiny", vocab_size=67)."""
    cfg = ModelConfig(**apply_preset({"preset": name, **overrides}))
    cfg.validate()
    return cfg


def config_to_dict(cfg: ModelConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def config_from_dict(data: dict) -> ModelConfig:
    """Rebuild a config saved with a checkpoint (ignores keys this version does not know)."""
    known = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in data.items() if k in known})
    cfg.validate()
    return cfg


def with_vocab(cfg: ModelConfig, vocab_size: int) -> ModelConfig:
    """The config with vocab_size taken from the tokenizer when the user left it unset."""
    if cfg.vocab_size is None:
        return replace(cfg, vocab_size=vocab_size)
    if cfg.vocab_size < vocab_size:
        raise ValueError(f"model.vocab_size ({cfg.vocab_size}) is smaller than the tokenizer's vocabulary "
                         f"({vocab_size}); remove model.vocab_size or raise it")
    return cfg
