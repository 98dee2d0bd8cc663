"""The decoder-only Transformer: token embedding -> N blocks -> final norm -> vocabulary logits.

Read top to bottom: Block (attention + MLP, each in a pre-norm residual branch), then GPT.
Shapes: B = batch, T = time, C = n_embd, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention, attention_mask
from .chunked_loss import IGNORE_INDEX, linear_cross_entropy, worth_chunking
from .config import ModelConfig
from .linear import Linear
from .kv_cache import KVCache
from .layers import make_mlp, make_norm, rope_tables


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): the pre-norm residual block of GPT-2 and Llama."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = make_mlp(cfg)

    def forward(self, x: torch.Tensor, rope=None, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unset; take it from the tokenizer (model.config.with_vocab)")
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Activation checkpointing (a training choice, not part of the architecture): see hidden_states.
        self.activation_checkpointing = False
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta, cfg.rope_scaling)
            # Not persistent: derived from the config, so they stay out of checkpoints.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two branches to the residual stream, so the output
        # projections start with std / sqrt(2 * n_layer) and the stream's variance stays ~constant with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_dropout(self, p: float) -> None:
        """Change the dropout probability everywhere (e.g. for fine-tuning a model saved without dropout)."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, CausalSelfAttention):
                module.dropout = p  # passed to SDPA as dropout_p

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once); optionally only the non-embedding part.

        Non-embedding parameters (those in the blocks and final norm) are the ones scaling laws count.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            tables = [self.tok_emb, self.pos_emb] + ([] if self.config.tie_embeddings else [self.lm_head])
            n -= sum(t.weight.numel() for t in tables if t is not None)
        return n

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, attn_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V); or, given targets (B, T), the summed cross-entropy.

        Training passes only idx. Generation may also pass:
          positions: (B, T) position of each token; default: the T positions after what the cache holds.
            Left-padded rows start later, so their positions differ from the column index.
          cache: one KVCache per block (model.kv_cache.make_caches); the new keys/values are appended.
          attn_mask: (B, S) True for real tokens, False for padding, over all S = cached + T positions;
            or a complete (B, 1, T, S) mask, True where a query may attend to a key (used as given).
          targets: next-token ids (B, T), -100 where a position does not count. The loss is then computed
            in chunks of rows without ever holding the (B, T, V) logits (model/chunked_loss.py).
        """
        hidden = self.hidden_states(idx, positions, cache, attn_mask)
        if targets is None:
            return self.lm_head(hidden)
        plain_head = type(self.lm_head) is Linear and self.lm_head.bias is None
        if plain_head and worth_chunking(targets.numel(), self.config.vocab_size):
            return linear_cross_entropy(hidden, self.lm_head.weight, targets)
        # Small logits, or an output layer with extras (a LoRA adapter, a quantized weight): logits, then the loss.
        logits = self.lm_head(hidden).float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")

    def hidden_states(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> final-norm output (B, T, C): everything but the vocabulary projection.

        Task heads (e.g. a classifier) read these features; the arguments are forward's.
        """
        B, T = idx.shape
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size {self.config.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            if positions is None:
                positions = torch.arange(past, past + T, device=idx.device)  # (T,): the same for every row
            x = x + self.pos_emb(positions)
        else:
            rope = self._rope_angles(positions, past, T)
        # Training (no cache, no padding) lets attention use its built-in causal mask: no extra work.
        if attn_mask is not None and attn_mask.dim() == 4:
            mask = attn_mask  # a complete (B, 1, T, S) mask, e.g. block-diagonal for packed examples
        elif attn_mask is None and (past == 0 or T == 1):
            # No padding and either nothing cached (plain causal attention over x) or a single new
            # token (it may see every cached position): attention needs no mask, which is faster.
            mask = None
        else:
            mask = attention_mask(T, past + T, attn_mask, idx.device)
        x = self.drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.blocks):
            if recompute:
                # Keep only each block's input; backward runs the block again to get what it needs (about
                # a third more compute for activation memory that no longer grows with the blocks' insides).
                # The random state is replayed, so dropout masks match.
                x = checkpoint(block, x, rope, None, mask, use_reentrant=False)
            else:
                x = block(x, rope, cache[i] if cache is not None else None, mask)
        return self.final_norm(x)

    def _rope_angles(self, positions: torch.Tensor | None, past: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of each token's rotation: (T, D) shared by all rows, or (B, 1, T, D) per row."""
        if positions is None:
            return self.rope_cos[past:past + T], self.rope_sin[past:past + T]
        # Gather one row of angles per token, then add a heads axis so they broadcast over (B, H, T, D).
        return self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
