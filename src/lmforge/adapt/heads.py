"""Sequence classification: a pretrained GPT body with an n-class linear head instead of the LM head.

A decoder-only model reads left to right, so only the LAST token of a sequence has seen all of it:
its final hidden state summarises the whole input. The classifier takes that vector, one per
sequence, and maps it to class logits with a single linear layer (the "head").

Batches are right-padded (real tokens first, padding after), and `last_index` gives, per row, the
position of its last real token (length - 1). Causal attention never lets a token look right, so
the padding after it cannot change its hidden state: a padded row classifies exactly like the same
sequence alone. (Left padding would shift positions and need an attention mask; we don't use it.)

How much of the body learns is a choice (freeze_for_classification):
  "none"  only the head trains: a "linear probe" of what the pretrained features already encode;
  N       the last N blocks, the final norm and the head train: cheap, often nearly as good;
  "all"   full fine-tuning.
LoRA (lora.py) is the fourth option: apply_lora(classifier, ...) adapts the body's attention/MLP.

Checkpoints: ClassifierModel.state_dict() holds plain tensors, the body's GPT names under "body."
("body.tok_emb.weight", "body.blocks.0.attn.q.weight", ...) and the head as "head.weight" and
"head.bias". The body has no lm_head entry (the vocabulary projection is dropped). Rebuild with
ClassifierModel.from_config(model_config, num_classes) and load_state_dict.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..model.config import ModelConfig
from ..model.gpt import GPT
from .lora import ParamCount, count_params

FREEZE_MODES = ("all", "none")


class ClassifierModel(nn.Module):
    """GPT body -> hidden state of each sequence's last real token -> linear head -> (B, num_classes)."""

    def __init__(self, body: GPT, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.body = body
        # The vocabulary projection is never used; dropping it keeps it out of checkpoints and optimizers.
        # (A tied lm_head shares tok_emb's matrix, which the body still holds.)
        body.lm_head = nn.Identity()
        self.num_classes = num_classes
        embedding = body.tok_emb.weight
        self.head = nn.Linear(body.config.n_embd, num_classes, device=embedding.device, dtype=embedding.dtype)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, config: ModelConfig, num_classes: int) -> ClassifierModel:
        """A fresh classifier with this architecture: load a saved state_dict into it."""
        return cls(GPT(config), num_classes)

    @property
    def config(self) -> ModelConfig:
        return self.body.config

    def forward(self, idx: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) right-padded token ids, last_index (B,) position of each row's last real token
        (default T - 1: no padding) -> class logits (B, num_classes)."""
        B, T = idx.shape
        if last_index is None:
            last_index = torch.full((B,), T - 1, device=idx.device)
        if last_index.shape != (B,) or last_index.min() < 0 or last_index.max() >= T:
            raise ValueError(f"last_index must hold {B} positions in [0, {T - 1}], got {last_index.tolist()}")
        hidden = self.body.hidden_states(idx)  # (B, T, C)
        last = hidden[torch.arange(B, device=idx.device), last_index]  # (B, C)
        return self.head(last)


def last_index_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Sequence lengths (B,) of a right-padded batch -> position of each row's last real token."""
    return lengths.long() - 1


def freeze_for_classification(model: ClassifierModel, trainable: str | int = "none") -> ParamCount:
    """Choose what trains (see the module docstring): "none", "all", or N = the last N blocks.

    With N, the last N blocks, the final norm and the head train; embeddings and earlier blocks are
    frozen. Returns how many parameters now train.
    """
    n_layer = len(model.body.blocks)
    is_count = isinstance(trainable, int) and not isinstance(trainable, bool)
    if not (trainable in FREEZE_MODES or (is_count and 0 <= trainable <= n_layer)):
        raise ValueError(f"trainable must be 'all', 'none' or a block count in 0..{n_layer}, got {trainable!r}")
    model.requires_grad_(trainable == "all")
    model.head.requires_grad_(True)
    if is_count:
        model.body.final_norm.requires_grad_(True)
        for block in model.body.blocks[n_layer - trainable:]:
            block.requires_grad_(True)
    return count_params(model)
