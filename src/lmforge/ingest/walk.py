"""Finding the files to read: folders walked in a fixed order, archives opened like folders.

Only regular files are read. Symbolic links are not followed (they may lead out of the tree, or
in circles), and FIFOs, sockets and devices are reported and never opened: opening a FIFO waits
for a writer that may never come. Archive members are unpacked into a temporary folder (removed
when the walk ends) by archives.py, under its limits, and keep a readable source name such as
"bundle.zip::notes/a.txt".
"""

from __future__ import annotations

import contextlib
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archives import ArchiveBudget, ArchiveLimitReached, ArchiveLimits, extract
from .detect import HEAD_BYTES, SKIP_DIRS, SKIP_FILENAMES, detect_format


@dataclass(frozen=True)
class WorkItem:
    path: Path      # a real file on disk (archive members are extracted first)
    source: str     # the name reported to the user
    group: str      # documents of one group share boilerplate (same folder or same archive)
    format: str | None = None  # what detect_format said; None: binary of no supported format


@dataclass(frozen=True)
class SkippedItem:
    source: str
    reason: str
    format: str = "archive"  # "archive" (an archive or one of its members) or "special" (a FIFO, socket, device)


def iter_paths(root: Path) -> Iterator[Path]:
    """Regular files under `root` in sorted order, without hidden files and dependency/tool folders."""
    for path, special in _tree(Path(root)):
        if special is None:
            yield path


def _tree(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each regular file under `root`, sorted; (path, what it is) for FIFOs, sockets, devices."""
    mode = root.stat().st_mode  # the root as given may be a link to a folder: that one is followed
    if not stat.S_ISDIR(mode):
        yield root, _special_kind(mode)
        return
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        mode = entry.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_ISDIR(mode):
            if entry.name not in SKIP_DIRS:
                yield from _tree(entry)
        elif entry.name not in SKIP_FILENAMES:
            yield entry, _special_kind(mode)


def _special_kind(mode: int) -> str | None:
    """None for a regular file, else what the file is."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _display(path: Path, root: Path, prefix: str) -> str:
    relative = path.name if path == root else path.relative_to(root).as_posix()
    return f"{prefix}{relative}" if prefix else str(path)


def walk(sources: Sequence[str | Path], scratch: Path, limits: ArchiveLimits | None = None) -> Iterator[WorkItem | SkippedItem]:
    """Every readable file under `sources`, expanding archives into `scratch`; the rest as SkippedItems."""
    limits = limits or ArchiveLimits()
    for source in sources:
        root = Path(source).expanduser()
        if not root.exists():
            raise ValueError(f"{source}: no such file or folder")
        yield from _walk_tree(root, scratch, limits, depth=0, prefix="", budget=None)


def _walk_tree(root: Path, scratch: Path, limits: ArchiveLimits, depth: int, prefix: str,
               budget: ArchiveBudget | None) -> Iterator[WorkItem | SkippedItem]:
    """The files under `root`, an archive's folder when `budget` is given (`depth` archives deep)."""
    for path, special in _tree(root):
        display = _display(path, root, prefix)
        if special is not None:
            yield SkippedItem(display, f"{special}, not a regular file: never opened", "special")
            continue
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        fmt = detect_format(path, head)
        if fmt != "archive":
            group = f"{prefix}{path.parent.relative_to(root).as_posix()}" if root.is_dir() else str(path.parent)
            yield WorkItem(path, display, group, fmt)
        elif limits.max_depth and depth >= limits.max_depth:
            yield SkippedItem(display, f"an archive inside {depth} archives: deeper than ingest.max_archive_depth "
                                       f"({limits.max_depth}), not opened")
        else:
            yield from _walk_archive(path, display, scratch, limits, depth, budget or ArchiveBudget(limits))


def _walk_archive(path: Path, display: str, scratch: Path, limits: ArchiveLimits, depth: int,
                  budget: ArchiveBudget) -> Iterator[WorkItem | SkippedItem]:
    target = Path(tempfile.mkdtemp(dir=scratch, prefix="archive-"))
    try:
        for member, reason in extract(path, target, budget):
            yield SkippedItem(f"{display}::{member}", reason)
    except ArchiveLimitReached as exc:
        yield SkippedItem(display, f"archive {exc}; the members before it are read")
    except Exception as exc:  # noqa: BLE001 - whatever a corrupt archive makes zipfile/tarfile/zlib raise
        yield SkippedItem(display, f"unreadable archive (corrupt or truncated?): {type(exc).__name__}: {exc}; "
                                   "the members before the damage are read")
    yield from _walk_tree(target, scratch, limits, depth + 1, prefix=f"{display}::", budget=budget)


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lmforge-ingest-") as folder:
        yield Path(folder)
