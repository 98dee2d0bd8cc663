"""The run folder (train.out_dir): one run at a time in it, and never a fresh start over an old run by accident.

* A lock: the run holds an exclusive `flock` on out_dir/.lmforge.lock while it lives, with its process
  id, host, start time and command written inside. A second run on the same folder stops at once and
  says who holds it. The kernel drops the lock when the holder exits in any way (kill -9 included), so
  a crashed run never leaves a stale lock behind; the file itself stays (deleting it would let two
  runs each lock a different file of the same name).
* What is already there: with train.resume=auto a folder holding a run continues from its newest
  intact checkpoint; a folder holding a run's files but no checkpoint to continue from (the run died
  before its first save, or every checkpoint is damaged) is refused, not silently overwritten. With
  train.resume=never the old run's checkpoints and logs are removed first, saying so: starting over
  was asked for, and a leftover step-NNNNNN/ of the old run must never be mistaken for one of the new.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import checkpoint as ckpt
from .diagnose import DIAGNOSIS_FILENAME
from .metrics import METRICS_FILENAME
from .plots import LOSS_BY_EPOCH_FILENAME, TRAINING_CURVE_FILENAME

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected from each other
    fcntl = None

LOCK_FILE = ".lmforge.lock"
# What a training run writes into its folder (config.yaml is rewritten by every run and not counted).
RUN_LOGS = (METRICS_FILENAME, "samples.jsonl", DIAGNOSIS_FILENAME, TRAINING_CURVE_FILENAME, LOSS_BY_EPOCH_FILENAME,
            "tensorboard", "classification_report.json")
CHECKPOINT_NAMES = ("last", ".old-last", "best")


class RunFolderBusy(ValueError):
    """Another run holds the folder (a ValueError: the command line prints it as one line and exits non-zero)."""


@contextmanager
def claim_run_folder(run_dir: str | Path, resume: str, is_main: bool = True) -> Iterator[None]:
    """Hold `run_dir` for this run: lock it, then settle what an earlier run left there (see the module doc).

    Only the main process of a distributed run claims the folder; the others write nothing there.
    """
    if not is_main:
        yield
        return
    run_dir = Path(run_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(run_dir):
        _settle_earlier_run(run_dir, resume)
        yield


@contextmanager
def _exclusive_lock(run_dir: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(run_dir / LOCK_FILE, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise RunFolderBusy(f"train.out_dir: {run_dir} is in use by another run ({_describe_holder(lock.read())}); "
                                f"wait for it to finish, stop it, or choose another out_dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}) + "\n")
        lock.flush()
        yield  # closing the file at the end releases the lock


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def earlier_run_files(run_dir: Path) -> list[Path]:
    """The checkpoints and logs an earlier run left in `run_dir` (empty for a new folder)."""
    names = set(RUN_LOGS) | set(CHECKPOINT_NAMES)
    return sorted(p for p in run_dir.iterdir()
                  if p.name in names or ckpt.STEP_DIR.match(p.name) or p.name.startswith(".tmp-"))


def _settle_earlier_run(run_dir: Path, resume: str) -> None:
    found = earlier_run_files(run_dir)
    if not found:
        return
    if resume == "never":
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        print(f"train.resume=never: removed the earlier run in {run_dir} "
              f"({', '.join(p.name for p in found[:8])}{', ...' if len(found) > 8 else ''})")
        return
    if resume != "auto":
        return
    intact, damaged_folders = ckpt.choose_resume(run_dir)
    if intact is not None:
        return
    damaged = [f"{path.name}/: {why}" for path, why in damaged_folders]
    detail = f"; damaged: {'; '.join(damaged)}" if damaged else " (it stopped before its first checkpoint)"
    raise ValueError(f"train.out_dir: {run_dir} holds an earlier run ({', '.join(p.name for p in found[:6])}) "
                         f"but no intact checkpoint to continue from{detail}. Start it over with "
                         f"--train.resume=never (its files are removed) or choose another out_dir")
