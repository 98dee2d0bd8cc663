"""Functions for the supervisor and pipeline tests that hang, die or eat memory on purpose.

They live in an importable module (not in a test file) because worker processes are started with
"spawn": a worker finds a function by importing its module by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lmforge.ingest.pipeline import read_item as real_read_item


def square_after_a_while(n: int) -> int:
    """n * n, later for small n: later tasks finish first, which must not change the order of results."""
    time.sleep(0.05 * (5 - n) if n < 5 else 0)
    return n * n


def misbehave(task: str) -> str:
    """'hang' sleeps, 'die' kills its own process, 'eat' allocates 1 GB, 'child' starts a long program
    (writing its pid to the file named after the colon) and hangs; anything else comes back."""
    if task == "hang":
        time.sleep(600)
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if task == "eat":
        try:
            return f"got {len(bytearray(1024**3)):,} bytes"
        except MemoryError:
            return "MemoryError"
    if task.startswith("child:"):
        child = subprocess.Popen(["sleep", "600"])
        Path(task.split(":", 1)[1]).write_text(str(child.pid))
        time.sleep(600)
    return task


def read_or_misbehave(item, options, cache_dir):
    """The pipeline's read_item, except for files named hang.txt (never returns) and die.txt (SIGKILL)."""
    if item.path.name == "hang.txt":
        time.sleep(600)
    if item.path.name == "die.txt":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_read_item(item, options, cache_dir)
