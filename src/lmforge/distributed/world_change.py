"""Resuming on another number of processes than the checkpoint was written by.

Weights and optimizer state are saved whole (dist/state_dict.py), so they load into any number of
ranks. Two things do depend on the number of ranks:

Where each rank is in the data. Rank r of W reads the epoch's micro-batches r, r + W, r + 2W, ...,
so after local index i the first i * W micro-batches of the epoch are done, whichever rank read
them. On W' ranks the run continues at the first micro-batch not read yet, rounded up to a whole
round of W' -- local index ceil(i * W / W'): at most W' - 1 micro-batches of the epoch are skipped
and none is read twice. (The global batch -- batch_size x grad_accum_steps x world size sequences
per optimizer step -- changes with W; change grad_accum_steps with it to keep it: 2 ranks x 2
accumulation steps read what 4 ranks x 1 or 1 rank x 4 read.)

The random generators (dropout). Every rank saves its own; a rank with no saved state of its own
(the world grew) takes that of rank (its rank mod the old world size), so its dropout masks repeat
that rank's -- harmless, as they fall on different data.
"""

from __future__ import annotations


def data_position_for_world(position: dict, saved_world: int, world: int, batches_per_epoch: int) -> dict:
    """A batch stream's saved {"epoch", "index"} position, moved from `saved_world` ranks to `world` ranks."""
    if saved_world == world or "index" not in position:
        return position
    epoch = int(position["epoch"])
    index = -(-int(position["index"]) * saved_world // world)  # ceiling division
    if index >= batches_per_epoch:
        epoch, index = epoch + 1, 0
    return {**position, "epoch": epoch, "index": index}


def rng_for_rank(saved: list[dict], rank: int) -> dict:
    """The saved generator states this rank continues from (see the module docstring)."""
    return saved[rank % len(saved)]
