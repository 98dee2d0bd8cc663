"""Which llama.cpp architecture computes what an lmforge model computes, and its tensors under GGUF names.

lmforge's ModelConfig is a set of independent switches; llama.cpp has a fixed graph per architecture.
Three of them match lmforge exactly:

    gpt2   learned positions + LayerNorm + GELU MLP (llama.cpp wants every bias: missing ones are zeros)
    llama  RoPE + RMSNorm + SwiGLU, with or without biases
    qwen2  RoPE + RMSNorm + SwiGLU with biases on q/k/v only (Qwen2's own layout)

Any other mixture (GPT-2 with RoPE, Llama with LayerNorm or GELU, ...) has no llama.cpp graph and is
refused before anything is written.

Two layouts differ from lmforge's:

* GPT-2's graph reads one fused `attn_qkv` matrix: lmforge's q, k and v stacked along the output rows.
* RoPE. lmforge rotates dimension i of a head with dimension i + D/2 ("rotate half", Hugging Face's
  layout). llama.cpp's QWEN2 graph does the same (its NEOX rope type), but its LLAMA graph rotates
  neighbouring pairs (2i, 2i+1). So for llama the rows of the q and k projections are reordered within
  each head, i -> 2i and i + D/2 -> 2i + 1: the dot products q.k are unchanged, since q and k move alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..model.config import ModelConfig
from ..model.layers import scale_rope_frequencies


@dataclass(frozen=True)
class GGUFTensor:
    name: str  # the GGUF name, e.g. "blk.0.attn_q.weight"
    data: torch.Tensor  # float32, in PyTorch's (out, in) order (GGUF lists dimensions reversed)


def gguf_arch_of(cfg: ModelConfig) -> str:
    """"gpt2", "llama" or "qwen2"; a ValueError names the setting llama.cpp cannot run."""
    gpt2_like = (cfg.pos, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu")
    llama_like = (cfg.pos, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu")
    if gpt2_like:
        return "gpt2"
    if not llama_like:
        raise ValueError(
            f"--format gguf: llama.cpp has no architecture for pos={cfg.pos}, norm={cfg.norm}, mlp={cfg.mlp}; "
            "it runs learned+layernorm+gelu (GPT-2) or rope+rmsnorm+swiglu (Llama, Qwen2)")
    if cfg.has_qkv_bias and not cfg.bias:
        if cfg.rope_scaling and _rope_kind(cfg) != "linear":
            raise ValueError("--format gguf: llama.cpp's qwen2 graph supports only linear rope_scaling, "
                             f"not {_rope_kind(cfg)!r}")
        return "qwen2"
    return "llama"


def _rope_kind(cfg: ModelConfig) -> str | None:
    scaling = cfg.rope_scaling or {}
    return scaling.get("rope_type", scaling.get("type"))


def gguf_tensors(model, arch: str) -> Iterator[GGUFTensor]:
    """Every weight of `model` as llama.cpp's `arch` names and lays it out."""
    cfg = model.config
    params = {name: p.detach().float() for name, p in model.state_dict().items()}
    yield GGUFTensor("token_embd.weight", params["tok_emb.weight"])
    if arch == "gpt2":
        yield GGUFTensor("position_embd.weight", params["pos_emb.weight"])
    for i in range(cfg.n_layer):
        yield from _block_tensors(params, f"blocks.{i}.", f"blk.{i}.", cfg, arch)
    yield from _norm_tensors(params, "final_norm", "output_norm", arch)
    if not cfg.tie_embeddings:  # without output.weight llama.cpp reuses token_embd, as tying does
        yield GGUFTensor("output.weight", params["lm_head.weight"])
    if arch == "llama" and _rope_kind(cfg) == "llama3":
        yield GGUFTensor("rope_freqs.weight", llama3_rope_factors(cfg))


def _block_tensors(params: dict, ours: str, theirs: str, cfg: ModelConfig, arch: str) -> Iterator[GGUFTensor]:
    yield from _norm_tensors(params, ours + "attn_norm", theirs + "attn_norm", arch)
    if arch == "gpt2":
        for kind in ("weight", "bias"):
            parts = [_linear_part(params, f"{ours}attn.{m}", kind, cfg) for m in "qkv"]
            yield GGUFTensor(f"{theirs}attn_qkv.{kind}", torch.cat(parts))
    else:
        for ours_name, theirs_name in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")):
            for kind in ("weight", "bias"):
                tensor = params.get(f"{ours}attn.{ours_name}.{kind}")
                if tensor is None:
                    continue
                if arch == "llama" and ours_name in "qk":
                    heads = cfg.n_head if ours_name == "q" else cfg.kv_heads
                    tensor = half_split_to_interleaved(tensor, heads)
                yield GGUFTensor(f"{theirs}{theirs_name}.{kind}", tensor)
    yield from _linear(params, ours + "attn.o", theirs + "attn_output", cfg, arch)
    yield from _norm_tensors(params, ours + "mlp_norm", theirs + "ffn_norm", arch)
    if arch != "gpt2":
        yield from _linear(params, ours + "mlp.gate", theirs + "ffn_gate", cfg, arch)
    yield from _linear(params, ours + "mlp.up", theirs + "ffn_up", cfg, arch)
    yield from _linear(params, ours + "mlp.down", theirs + "ffn_down", cfg, arch)


def _linear(params: dict, ours: str, theirs: str, cfg: ModelConfig, arch: str) -> Iterator[GGUFTensor]:
    yield GGUFTensor(theirs + ".weight", params[ours + ".weight"])
    # llama.cpp's gpt2 graph requires every bias; a model trained without them gets zeros (exact).
    if ours + ".bias" in params or arch == "gpt2":
        yield GGUFTensor(theirs + ".bias", _linear_part(params, ours, "bias", cfg))


def _linear_part(params: dict, module: str, kind: str, cfg: ModelConfig) -> torch.Tensor:
    """A linear layer's weight, or its bias (zeros when the layer has none)."""
    if kind == "weight" or module + ".bias" in params:
        return params[f"{module}.{kind}"]
    return torch.zeros(params[module + ".weight"].shape[0])


def _norm_tensors(params: dict, ours: str, theirs: str, arch: str) -> Iterator[GGUFTensor]:
    weight = params[ours + ".weight"]
    yield GGUFTensor(theirs + ".weight", weight)
    if arch == "gpt2":  # LayerNorm with bias=False is a bias of zeros
        yield GGUFTensor(theirs + ".bias", params.get(ours + ".bias", torch.zeros_like(weight)))


def half_split_to_interleaved(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half pairs (i, i + D/2) to neighbouring pairs (2i, 2i + 1).

    Works on a projection's weight (rows = output features) and on its bias alike.
    """
    rows = tensor.shape[0]
    head_dim = rows // n_heads
    by_half = tensor.reshape(n_heads, 2, head_dim // 2, *tensor.shape[1:])  # (head, half, i, ...)
    return by_half.transpose(1, 2).reshape(tensor.shape)  # (head, i, half, ...): row 2i + half


def llama3_rope_factors(cfg: ModelConfig) -> torch.Tensor:
    """llama.cpp's rope_freqs tensor: by how much each rotation pair is slowed down (llama3 scaling)."""
    inv_freq = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    return inv_freq / scale_rope_frequencies(inv_freq, cfg.rope_scaling)


def add_hyperparameters(writer, cfg: ModelConfig, arch: str) -> None:
    """The `{arch}.*` keys llama.cpp reads to build the graph."""
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if _rope_kind(cfg) == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
