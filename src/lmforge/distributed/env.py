"""The torchrun environment: which process am I, how many are there, which device is mine.

torchrun starts one copy of the program per GPU (`--nproc_per_node`) on each machine (`--nnodes`)
and tells every copy who it is through environment variables:

    RANK         this process's number among all of them, 0 .. WORLD_SIZE-1; rank 0 is the main one
    LOCAL_RANK   its number on this machine, which is also the GPU it drives (cuda:LOCAL_RANK)
    WORLD_SIZE   how many processes in all (machines x processes per machine)
    MASTER_ADDR, MASTER_PORT   where the processes meet to form their group

A program started without torchrun has none of them: it is rank 0 of a world of one, and no process
group is created, so a single process runs exactly the code it always ran.

`distributed_session` joins the process group (NCCL between CUDA GPUs, gloo on CPU) for the length
of a run and leaves it afterwards; `barrier` and `main_process_first` make processes wait for each
other, e.g. while rank 0 alone tokenizes the data.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..utils.device import resolve_device
from .config import DistConfig


@dataclass(frozen=True)
class DistEnv:
    """Who this process is among the processes of a run (defaults: the only one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 is the one that prints, logs and writes files; the others only compute."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_from_torchrun(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them (absent: a single process)."""
    environ = os.environ if environ is None else environ
    env = DistEnv(rank=int(environ.get("RANK", 0)), local_rank=int(environ.get("LOCAL_RANK", 0)),
                  world_size=int(environ.get("WORLD_SIZE", 1)))
    if not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}; start the run with torchrun")
    return env


def process_device(device_name: str, env: DistEnv) -> torch.device:
    """The device of this process: with several processes on a GPU machine each takes cuda:LOCAL_RANK."""
    if not env.is_distributed:
        return resolve_device(device_name)
    if device_name.startswith("cuda:"):
        raise ValueError(f"train.device: {device_name} would put every process on one GPU; use cuda or auto, "
                         "and each process takes the GPU numbered by its LOCAL_RANK")
    device = resolve_device(device_name)
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             "start at most that many processes per node (--nproc_per_node)")
        return torch.device("cuda", env.local_rank)
    if device.type != "cpu":
        raise ValueError(f"train.device: {device.type} cannot train with several processes; use cuda or cpu")
    return device


def backend_for(device: torch.device, choice: str = "auto") -> str:
    """NCCL moves tensors GPU to GPU (NVLink, InfiniBand); gloo moves CPU tensors over TCP."""
    if choice != "auto":
        if choice == "nccl" and device.type != "cuda":
            raise ValueError("dist.backend: nccl needs CUDA GPUs; use gloo (or auto) to train on CPU")
        return choice
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(cfg: DistConfig, device_name: str) -> Iterator[tuple[DistEnv, torch.device]]:
    """Join the process group for the length of the block; yields (env, device). A single process joins nothing."""
    env = env_from_torchrun()
    device = process_device(device_name, env)
    if not env.is_distributed:
        yield env, device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and every later .cuda() use this process's own GPU
    dist.init_process_group(backend_for(device, cfg.backend), timeout=timedelta(minutes=cfg.timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    try:
        yield env, device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def quiet_unless_main(env: DistEnv):
    """A block whose prints show on rank 0 only: a run prints each line once, not once per process."""
    return contextlib.nullcontext() if env.is_main else contextlib.redirect_stdout(io.StringIO())


@contextlib.contextmanager
def main_process_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenizing data into a cache); the others run it after, finding it done.

    Without this every process would prepare the same files at once and trip over each other's writes.
    """
    if not env.is_main:
        barrier()
    yield
    if env.is_main:
        barrier()
