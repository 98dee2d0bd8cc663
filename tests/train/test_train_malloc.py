"""utils/malloc.py: glibc keeps freed memory for reuse (no fresh pages for big tensors every step)."""

import subprocess
import sys


def test_glibc_takes_the_settings_in_a_fresh_process():
    # A child process, so that this test process's allocator is left as it was.
    code = ("from lmforge.utils.malloc import keep_freed_memory; import torch\n"
            "assert keep_freed_memory() is True\n"
            "for _ in range(3): torch.zeros(50_000_000).sum()\n")  # 200 MB allocations still work
    subprocess.run([sys.executable, "-c", code], check=True)
