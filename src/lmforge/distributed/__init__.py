"""Training on several processes -- GPUs of one machine or of many -- started by torchrun.

    torchrun --standalone --nproc_per_node 4 -m lmforge train run.yaml     (or: lmforge train run.yaml --nproc 4)

Every process runs the same training loop as a single process would; what differs is gathered here:

config        DistConfig, the `dist:` section: strategy (auto | none | ddp | fsdp), backend, timeout
env           who am I (RANK, LOCAL_RANK, WORLD_SIZE from torchrun), my device, joining the process group
wrap          DistributedDataParallel or FSDP2 `fully_shard` around the model; gradient sync on/off
collectives   sums and maxima over ranks (so all ranks agree), an even split of work items
state_dict    whole (consolidated) weights and optimizer state for checkpoints, from any strategy
world_change  resuming with another number of processes: data position and random generators

Importing the package loads nothing heavy (the config reads DistConfig without torch); the names
below are imported on first use.
"""

from importlib import import_module

_EXPORTS = {
    "DistConfig": "lmforge.distributed.config",
    "DistEnv": "lmforge.distributed.env",
    "distributed_session": "lmforge.distributed.env",
    "env_from_torchrun": "lmforge.distributed.env",
    "main_process_first": "lmforge.distributed.env",
    "resolve_strategy": "lmforge.distributed.wrap",
    "wrap_model": "lmforge.distributed.wrap",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge.distributed' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
