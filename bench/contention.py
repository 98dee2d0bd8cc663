"""How much CPU *other* processes took while a benchmark measured.

On 2 cores one busy neighbour is enough to ruin a timing (a 2-thread step waits for its descheduled
thread at every parallel region), and the load average cannot tell: it counts our own threads too and
lags by a minute. So the benchmarks read /proc/stat (busy time machine-wide) and subtract the CPU time
of their own process tree.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

Snapshot = tuple[float, float, float]


def cpu_snapshot() -> Snapshot:
    """(wall seconds, CPU seconds busy machine-wide, CPU seconds of this process and its finished children)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return time.perf_counter(), (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), ours


def others_cpu(before: Snapshot, after: Snapshot) -> float:
    """Cores that other processes (and the hypervisor's steal) kept busy, on average, between two snapshots."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else 0.0


def wait_for_quiet(max_wait: float, quiet_cpu: float, window: float = 1.0) -> float:
    """Wait until other processes use at most `quiet_cpu` cores over a `window`-second sample, or `max_wait`
    seconds have passed; returns the seconds waited."""
    start = time.perf_counter()
    while True:
        before = cpu_snapshot()
        time.sleep(window)
        if others_cpu(before, cpu_snapshot()) <= quiet_cpu or time.perf_counter() - start >= max_wait:
            return time.perf_counter() - start - window
