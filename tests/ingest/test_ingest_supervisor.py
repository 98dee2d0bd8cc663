"""The supervisor: results in task order; a task that hangs, dies or eats memory is lost alone."""

import os
import time

from lmforge.ingest.supervisor import Lost, run_supervised
from tests.ingest.misbehaving import misbehave, square_after_a_while


def test_results_come_back_in_task_order_whatever_finishes_first():
    assert list(run_supervised(square_after_a_while, list(range(8)), workers=3)) == [n * n for n in range(8)]


def test_a_hanging_task_is_stopped_and_the_others_go_on():
    start = time.monotonic()
    results = list(run_supervised(misbehave, ["a", "hang", "b", "c"], workers=2, seconds=2))
    assert results[0] == "a" and results[2:] == ["b", "c"]
    assert isinstance(results[1], Lost) and results[1].timed_out and "2 s" in results[1].reason
    assert time.monotonic() - start < 60  # not the 600 s the task would have slept


def test_a_killed_worker_loses_only_its_task_and_a_fresh_one_takes_over():
    results = list(run_supervised(misbehave, ["a", "die", "b", "die", "c"], workers=1))
    assert results[0] == "a" and results[2] == "b" and results[4] == "c"
    for lost in (results[1], results[3]):
        assert isinstance(lost, Lost) and not lost.timed_out and "SIGKILL" in lost.reason


def test_the_memory_limit_makes_a_big_allocation_fail_in_the_worker():
    (limited,) = run_supervised(misbehave, ["eat"], workers=1, memory_bytes=512 * 1024**2)
    assert limited == "MemoryError"
    (unlimited,) = run_supervised(misbehave, ["eat"], workers=1)
    assert unlimited == "got 1,073,741,824 bytes"


def test_a_stopped_worker_takes_the_programs_it_started_with_it(tmp_path):
    pid_file = tmp_path / "child.pid"
    (lost,) = run_supervised(misbehave, [f"child:{pid_file}"], workers=1, seconds=2)
    assert isinstance(lost, Lost)
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is immediate; reaping by init may take a moment
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with open(f"/proc/{child}/stat") as f:
            assert f.read().split(")")[1].split()[0] == "Z", "the program the worker started still runs"


def test_no_tasks_start_no_workers():
    assert list(run_supervised(misbehave, [], workers=4)) == []
