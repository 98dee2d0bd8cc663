"""Run one function over many tasks in worker processes that may hang, crash or run out of memory.

The readers run on whatever a folder holds, and a hostile or broken file can make one hang (a
huge scan), eat all memory, or crash the interpreter in a C library. concurrent.futures gives up
on the whole pool when one worker dies (BrokenProcessPool) and cannot stop one busy task, so the
ingest uses this small supervisor instead:

* each worker is a process of its own with a pipe, and runs one task at a time;
* a task still running after `seconds` has its worker killed (with every program the worker
  started, e.g. Tesseract), and comes back as a Lost saying so;
* a worker that dies (the kernel's OOM killer, a segfault) loses only its task, also a Lost;
* either way a fresh worker takes its place and the other tasks go on;
* results come back in the order of the tasks, however the workers finish, so the output of a
  run does not depend on timing.

Workers are started with "spawn": a clean interpreter that does not inherit the parent's threads
or its memory, so the memory limit counts the worker's own use only.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

_SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Lost:
    """A task whose worker was stopped (out of time) or died; `reason` says what happened, in words."""

    reason: str
    timed_out: bool = False


def run_supervised(function: Callable, tasks: Sequence, workers: int, seconds: float = 0,
                   memory_bytes: int = 0) -> Iterator[object]:
    """function(task) for each task, in task order, each in a worker process; a Lost where it failed.

    `function` must be picklable (a module-level function, or a functools.partial of one). `seconds`
    limits each task's wall time, `memory_bytes` each worker's address space (0: no limit).
    """
    if not tasks:
        return
    waiting = deque(enumerate(tasks))
    finished: dict[int, object] = {}
    pool = [_Worker(function, memory_bytes) for _ in range(max(1, min(workers, len(tasks))))]
    try:
        for next_index in range(len(tasks)):
            while next_index not in finished:
                for worker in pool:
                    if worker.index is None and waiting:
                        worker.start_task(*waiting.popleft(), seconds)
                _collect(pool, finished, function, memory_bytes, seconds)
            yield finished.pop(next_index)
    finally:
        for worker in pool:
            worker.kill()


def _collect(pool: list[_Worker], finished: dict[int, object], function: Callable, memory_bytes: int,
             seconds: float) -> None:
    """Wait until a busy worker finishes, dies or runs out of time; replace the workers lost."""
    busy = [worker for worker in pool if worker.index is not None]
    deadlines = [worker.deadline for worker in busy if worker.deadline is not None]
    timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
    wait([worker.connection for worker in busy] + [worker.process.sentinel for worker in busy], timeout)
    for position, worker in enumerate(pool):
        if worker.index is None:
            continue
        outcome = worker.outcome(seconds)
        if outcome is None:
            continue  # still working
        finished[worker.index] = outcome
        worker.index = None
        if isinstance(outcome, Lost):
            worker.kill()
            pool[position] = _Worker(function, memory_bytes)


class _Worker:
    """One worker process, the parent's end of its pipe, and the task it is running (if any)."""

    def __init__(self, function: Callable, memory_bytes: int) -> None:
        self.connection, child_end = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_serve, args=(child_end, function, memory_bytes), daemon=True)
        self.process.start()
        child_end.close()  # the child holds it now; closed here, a dead child reads as EOF
        self.index: int | None = None
        self.deadline: float | None = None

    def start_task(self, index: int, task: object, seconds: float) -> None:
        self.index = index
        self.deadline = time.monotonic() + seconds if seconds else None
        try:
            self.connection.send((index, task))
        except OSError:  # it died while idle: outcome() finds it dead and reports the task lost
            pass

    def outcome(self, seconds: float) -> object | None:
        """The task's result, a Lost, or None while it is still running in time."""
        if self.connection.poll():
            try:
                _, result = self.connection.recv()
                return result
            except (EOFError, OSError):  # the pipe closed: the process died; its exit code says how
                self.process.join(timeout=5)
        if not self.process.is_alive():
            return Lost(_death(self.process.exitcode))
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return Lost(f"still running after {seconds:g} s: stopped", timed_out=True)
        return None

    def kill(self) -> None:
        """Kill the worker and everything it started (it leads its own process group)."""
        for send in (lambda: os.killpg(self.process.pid, signal.SIGKILL), self.process.kill):
            try:
                send()
            except (ProcessLookupError, PermissionError):
                pass  # gone already, or the group is not made yet: the plain kill covers it
        self.process.join()
        self.connection.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = " (the out-of-memory killer sends this)" if exitcode == -signal.SIGKILL else ""
        return f"the reader process was killed by {name}{why}"
    return f"the reader process exited with status {exitcode}"


def _serve(connection, function: Callable, memory_bytes: int) -> None:
    """A worker's life: run tasks from the pipe until it closes."""
    os.setpgid(0, 0)  # a group of its own, so that a kill also stops the programs it runs (Tesseract)
    if memory_bytes:
        # Children (Tesseract) inherit the limit. A failed allocation in Python is a MemoryError,
        # which the task reports itself; in a C library it may kill the worker, which run_supervised reports.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    while True:
        try:
            index, task = connection.recv()
        except EOFError:  # the parent is gone or done
            return
        connection.send((index, function(task)))
