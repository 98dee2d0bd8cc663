"""AdamW with decay/no-decay parameter groups, and the learning-rate schedule.

Weight decay pulls weights toward zero. It helps matrices (it limits their scale) but hurts
gains, biases and embeddings, so those go into a group with weight_decay=0 -- the same rule as
GPT-2/nanoGPT: decay every parameter with 2+ dimensions except the token/position tables.
"""

from __future__ import annotations

import inspect
import math

import torch

from .config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad:
            continue
        is_table = name.endswith(("tok_emb.weight", "pos_emb.weight"))
        (decay if p.dim() >= 2 and not is_table else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    if cfg.optimizer != "adamw":
        return _bitsandbytes_adamw(groups, cfg, device)
    fused = _fused_adamw_supported(groups, device)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **({"fused": True} if fused else {}))


def _fused_adamw_supported(groups: list[dict], device: torch.device) -> bool:
    """Whether torch's fused AdamW kernel can update these parameters.

    Without it torch runs one small op per parameter tensor per moment on CPU (its foreach path is CUDA
    only): ~750 ops per step for a 4-layer model, 13% of a tiny model's step. The fused kernel (CUDA, and
    CPU since torch 2.4) updates each tensor in one pass. It needs floating-point parameters on one device.
    """
    if device.type not in ("cpu", "cuda") or "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    params = [p for group in groups for p in group["params"]]
    return all(p.is_floating_point() and p.device.type == device.type for p in params)


def _bitsandbytes_adamw(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """8-bit AdamW: both moments stored in 8 bits with blockwise scales (2 bytes/param instead of 8).

    The paged variant keeps its state in memory the GPU can page out to CPU RAM when it runs short
    (the QLoRA paper's "paged optimizers"); paging needs CUDA unified memory, and on CPU bitsandbytes
    falls back to the unpaged optimizer with a warning.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ImportError(f"train.optimizer={cfg.optimizer} needs bitsandbytes: pip install 'lmforge[quant]'") from exc
    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: TrainConfig, progress: float) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup over `warmup_steps`, then decay from lr to min_lr as `progress` (the share of the
    run after warmup that is done, 0..1) goes from 0 to 1.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - cfg.min_lr) * progress
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def decay_progress(step: int, total_steps: int | None, warmup_steps: int) -> float:
    """How far through the decay phase step `step` (0-based) is: 0 at the first step after warmup, 1 at
    the last step of the run, so the last step trains at min_lr. 0 while the length is not yet known
    (a time-budgeted run before its length is fitted, see budget.py)."""
    if total_steps is None:
        return 0.0
    return (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
