"""How ranks share work and agree on results.

A distributed run goes wrong in two quiet ways: ranks that compute different numbers (e.g. each
normalising its loss by its own token count) and ranks that take different decisions (one stops,
the others wait forever at the next collective). The helpers here avoid both: sums and maxima over
all ranks, so every rank ends up with the same value, and an even split of a list of work items.

Each one works unchanged in a single process (no process group): the values come back as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (a new tensor, identical on every rank)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def max_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of `tensor` over all ranks (identical on every rank)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if not _in_group():
        return tensor
    result = tensor.detach().clone()
    dist.all_reduce(result, op=op)
    return result


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not _in_group():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def round_robin(items: Iterable[T], rank: int, world_size: int) -> Iterator[tuple[T, bool]]:
    """This rank's share of `items` -- items rank, rank + world_size, ... -- as (item, counts) pairs.

    Every rank gets the same number of pairs: where the items run out in the last round, a rank is
    handed a repeat of the first item with counts=False (run it, but leave its result out). Under
    FSDP a forward pass is collective -- each block all-gathers its weights from every rank -- so a
    rank that skipped a pass would leave the others waiting.
    """
    if world_size == 1:
        yield from ((item, True) for item in items)
        return
    pool = list(items)
    if not pool:
        return
    rounds = -(-len(pool) // world_size)  # ceiling division
    for i in range(rank, rounds * world_size, world_size):
        yield (pool[i], True) if i < len(pool) else (pool[0], False)
