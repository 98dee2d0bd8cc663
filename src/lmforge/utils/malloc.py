"""Keep freed memory inside the process, so big tensors are not page-faulted in anew at every step.

glibc's malloc serves large requests (above a threshold of at most 32 MB) with fresh mmap'd pages and
hands them back to the kernel on free. A training step on CPU allocates the same big tensors every
time (GPT-2's 50,257 x 768 embedding gradient alone is 154 MB), so every step pays for the kernel to
map and zero those pages again: ~230,000 page faults per GPT-2 124M step on CPU. Told not to use mmap
and not to trim its heap, malloc reuses the freed memory instead. The price is a somewhat higher peak resident memory (fragmentation)
and memory that is not returned to the system until the process ends. Other allocators (jemalloc,
tcmalloc via LD_PRELOAD, as Intel's PyTorch guide suggests) do the same; this needs nothing installed.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Switch glibc malloc to reuse freed memory; True if done (Linux with glibc), False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl has a mallopt that ignores these)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
