"""DistConfig: how a run spreads over several processes (one per GPU) when torchrun starts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DistConfig:
    """Data parallelism: several processes, each with a copy (ddp) or a shard (fsdp) of the model.

    Read only when the run is started by torchrun (or `lmforge train --nproc N`) with more than one
    process; a single process ignores this section and trains exactly as before.
    """

    strategy: Literal["auto", "none", "ddp", "fsdp"] = field(default="auto", metadata={
        "help": "ddp = a full copy of the model per process, gradients averaged; fsdp = weights, gradients and "
                "optimizer state sharded over the processes (FSDP2); auto = ddp unless a full copy's training "
                "state would fill more than half a GPU, then fsdp; none = refuse to run on several processes"})
    backend: Literal["auto", "nccl", "gloo"] = field(default="auto", metadata={
        "help": "communication library: auto = nccl on CUDA GPUs, gloo on CPU"})
    timeout_minutes: float = field(default=30.0, metadata={
        "help": "how long a process waits for the others at a collective (e.g. while rank 0 prepares the data) "
                "before the run fails"})

    def validate(self) -> None:
        if self.timeout_minutes <= 0:
            raise ValueError(f"timeout_minutes: must be positive, got {self.timeout_minutes}")
