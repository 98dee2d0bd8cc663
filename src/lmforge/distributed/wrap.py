"""Data parallelism: the same model on every process, each process on different data.

Every process (rank) runs forward and backward on its own micro-batches; before the optimizer
step the gradients are averaged over the ranks, so every rank takes the same step and the
copies stay identical. Two ways to do that, both PyTorch's own:

ddp   DistributedDataParallel. Every rank holds the whole model, its gradients and the AdamW
      moments (16 bytes per parameter in fp32). Backward all-reduces gradient buckets while it
      runs, so the communication hides behind computation. Fastest whenever the model fits.
fsdp  FSDP2 (`fully_shard`). Each rank keeps only 1/world of the weights, gradients and
      optimizer state. Every block all-gathers its weights just before its forward (and again
      for backward) and drops them right after; gradients are reduce-scattered so each rank
      gets the average for its shard. Memory per GPU falls by up to the number of ranks, for
      extra communication. Each transformer Block is sharded as a unit, then the root (the
      embeddings, final norm and head), so only one block is ever gathered at a time.

`auto` picks ddp unless one copy's training state (16 bytes per parameter) would take more than
half of a GPU's memory, which leaves too little for activations; then fsdp. On CPU, auto is ddp.

Gradient accumulation: micro-batches before the last one of a step need no communication --
their gradients are only summed locally -- so `gradient_sync(model, enabled=False)` switches
it off for them (DDP's no_sync, FSDP's set_requires_gradient_sync).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from ..model.gpt import Block

TRAINING_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's two moments
FSDP_ABOVE_SHARE_OF_GPU = 0.5  # auto shards when one copy's training state exceeds this share of a GPU


def resolve_strategy(strategy: str, world_size: int, n_params: int, device: torch.device) -> str:
    """none | ddp | fsdp for this run; one process always trains unwrapped ("none")."""
    if world_size == 1:
        return "none"
    if strategy == "none":
        raise ValueError(f"dist.strategy: none trains one process, but torchrun started {world_size}; "
                         "choose ddp, fsdp or auto, or start a single process")
    if strategy != "auto":
        return strategy
    return "fsdp" if _replica_fills_gpu(n_params, device) else "ddp"


def _replica_fills_gpu(n_params: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    capacity = torch.cuda.get_device_properties(device).total_memory
    return n_params * TRAINING_BYTES_PER_PARAM > FSDP_ABOVE_SHARE_OF_GPU * capacity


def wrap_model(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """What training calls forward on. `model` must already be on `device`.

    none: the model itself.  ddp: a DistributedDataParallel wrapper (the model inside is unchanged).
    fsdp: the model itself, sharded in place (its parameters become DTensors holding this rank's shard).
    """
    if strategy == "none":
        return model
    if strategy == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, **_no_buffer_resync())
    if strategy == "fsdp":
        return _shard(model, device)
    raise ValueError(f"dist.strategy: unknown {strategy!r}; choose auto, none, ddp or fsdp")


def _no_buffer_resync() -> dict:
    """The model's buffers (RoPE tables) are computed from the config, identical on every rank: re-sending
    rank 0's before every forward, DDP's default, would only cost time. (torch 2.13 renamed the switch.)"""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _shard(model: nn.Module, device: torch.device) -> nn.Module:
    # DDP copies rank 0's weights to every rank; fully_shard keeps each rank's own, so make them rank 0's first.
    _copy_rank0_weights(model)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: embeddings, final norm, head (a tied head shares the embedding)
    return model


@torch.no_grad()
def _copy_rank0_weights(model: nn.Module) -> None:
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor, src=0)


def is_sharded(model: nn.Module) -> bool:
    """True for a model sharded by fsdp (its parameters are DTensors)."""
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Forward and backward inside this block average gradients over ranks only when `enabled`.

    With enabled=False the gradients just accumulate on each rank; the next backward with sync on
    averages the accumulated sum. Forward must run inside the block too (DDP decides there).
    """
    if enabled or not isinstance(wrapped, (DistributedDataParallel, FSDPModule)):
        yield
    elif isinstance(wrapped, DistributedDataParallel):
        with wrapped.no_sync():
            yield
    else:
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)


def grad_scaler(device: torch.device, enabled: bool, strategy: str) -> torch.amp.GradScaler:
    """fp16's loss scaler. Under fsdp each rank sees only its shard's gradients, so whether any of them
    overflowed must be agreed over all ranks (ShardedGradScaler does that), or ranks would skip different steps."""
    if strategy == "fsdp" and enabled:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=True)
    return torch.amp.GradScaler(device.type, enabled=enabled)
