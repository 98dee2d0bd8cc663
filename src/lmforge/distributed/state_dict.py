"""Consolidated state: the whole model and the whole optimizer state, whatever the strategy.

Checkpoints store full, unsharded tensors -- the same files a single process writes. That is what
lets a run resume on another number of processes (one included), and lets every tool that reads
checkpoints ignore how the model was trained.

none, ddp  every rank holds the whole model and an identical optimizer: rank 0 saves its own.
fsdp       each rank holds a shard. torch.distributed.checkpoint's get_model_state_dict and
           get_optimizer_state_dict with full_state_dict=True, cpu_offload=True gather the shards
           into whole CPU tensors on rank 0. That is a collective: every rank calls it at the same
           point of the run, and only rank 0 gets the tensors.

The optimizer state has two spellings. Positional, from optimizer.state_dict() (parameters
numbered 0, 1, ...), is what a single process or DDP writes; by name ("blocks.0.attn.q.weight"),
from torch.distributed.checkpoint, is what FSDP writes. Loading accepts either, into any strategy:
a run sharded over 8 GPUs resumes in one process and the other way round.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from .wrap import is_sharded

GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


class FullModel:
    """The whole model, for checkpoints and samples, whether or not training shards it.

    Build it before the model is sharded: under fsdp rank 0 keeps a CPU copy of the unsharded model
    (host memory for one copy of the weights, no GPU memory), and gather() refreshes it from the shards.
    Without sharding it is simply the model.
    """

    def __init__(self, model: nn.Module, strategy: str, is_main: bool):
        self._model = model
        self._sharded = strategy == "fsdp"
        self._copy = copy.deepcopy(model).to("cpu") if self._sharded and is_main else None

    def gather(self) -> nn.Module | None:
        """The current whole model; under fsdp a collective that returns it on rank 0 and None elsewhere."""
        if not self._sharded:
            return self._model
        state = get_model_state_dict(self._model, options=GATHER_TO_RANK0)
        if self._copy is None:
            return None
        self._copy.load_state_dict(state)
        return self._copy


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state: a collective under fsdp (it is on rank 0 only), else this rank's own."""
    if not is_sharded(model):
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK0)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a whole optimizer state saved by full_optimizer_state, by any strategy, into `optimizer`.

    `model` is the module the optimizer's parameters belong to (sharded or not, never a DDP wrapper).
    Every rank passes the whole state; under fsdp each keeps the slices of its own shard.
    """
    if not is_sharded(model) and _keyed_by_position(saved):
        optimizer.load_state_dict(saved)  # exactly what a single process has always done
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=_keyed_by_name(saved, model, optimizer),
                             options=StateDictOptions(full_state_dict=True))


def _keyed_by_position(saved: dict) -> bool:
    return all(isinstance(p, int) for group in saved["param_groups"] for p in group["params"])


def _keyed_by_name(saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Rename positional keys to parameter names.

    Position k is the k-th parameter of the optimizer's groups, in order; the optimizer being loaded
    into was built the same way, and sharding keeps parameter names, so its k-th parameter's name is it.
    """
    if not _keyed_by_position(saved):
        return saved
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    positions = [p for group in saved["param_groups"] for p in group["params"]]
    if len(positions) != len(names):
        raise ValueError(f"the saved optimizer state holds {len(positions)} parameters, the model trains "
                         f"{len(names)}: the checkpoint does not belong to this model")
    name_at = dict(zip(positions, names))
    return {"state": {name_at[p]: state for p, state in saved["state"].items()},
            "param_groups": [{**group, "params": [name_at[p] for p in group["params"]]}
                             for group in saved["param_groups"]]}
