"""Finding the files to read: folders walked in a fixed order, archives opened like folders.

Archive members are extracted into a temporary folder (removed when the walk ends) and keep a
readable source name such as "bundle.zip::notes/a.txt". Extraction refuses members that would
land outside that folder (path traversal) and stops at a size cap (zip bombs).
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .detect import SKIP_DIRS, SKIP_FILENAMES, detect_format, HEAD_BYTES

MAX_ARCHIVE_DEPTH = 3                   # archives inside archives inside archives, no deeper
MAX_EXTRACTED_BYTES = 20 * 1024**3      # stop extracting one archive past 20 GB


@dataclass(frozen=True)
class WorkItem:
    path: Path      # a real file on disk (archive members are extracted first)
    source: str     # the name reported to the user
    group: str      # documents of one group share boilerplate (same folder or same archive)


@dataclass(frozen=True)
class SkippedItem:
    source: str
    reason: str


def iter_paths(root: Path) -> Iterator[Path]:
    """Files under `root` in sorted order, without hidden files and dependency/tool folders."""
    if root.is_file():
        yield root
        return
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir():
            if entry.name not in SKIP_DIRS:
                yield from iter_paths(entry)
        elif entry.name not in SKIP_FILENAMES:
            yield entry


def _display(path: Path, root: Path, prefix: str) -> str:
    relative = path.name if path == root else path.relative_to(root).as_posix()
    return f"{prefix}{relative}" if prefix else str(path)


def walk(sources: Sequence[str | Path], scratch: Path, depth: int = 0, prefix: str = "") -> Iterator[WorkItem | SkippedItem]:
    """Every readable file under `sources`, expanding archives into `scratch`."""
    for source in sources:
        root = Path(source).expanduser()
        if not root.exists():
            raise ValueError(f"{source}: no such file or folder")
        for path in iter_paths(root):
            display = _display(path, root, prefix)
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
            if detect_format(path, head) != "archive":
                group = f"{prefix}{path.parent.relative_to(root).as_posix()}" if root.is_dir() else str(path.parent)
                yield WorkItem(path, display, group)
            elif depth >= MAX_ARCHIVE_DEPTH:
                yield SkippedItem(display, f"archive nested more than {MAX_ARCHIVE_DEPTH} deep")
            else:
                yield from _walk_archive(path, display, scratch, depth)


def _walk_archive(path: Path, display: str, scratch: Path, depth: int) -> Iterator[WorkItem | SkippedItem]:
    target = Path(tempfile.mkdtemp(dir=scratch, prefix="archive-"))
    try:
        extract_archive(path, target)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError, EOFError) as exc:
        yield SkippedItem(display, f"unreadable archive: {exc}")
        return
    yield from walk([target], scratch, depth + 1, prefix=f"{display}::")


def extract_archive(path: Path, target: Path) -> None:
    """Extract a zip or tar archive into `target`, member by member, refusing unsafe paths."""
    target = target.resolve()
    total = 0
    for name, read in _archive_members(path):
        destination = (target / name).resolve()
        if not destination.is_relative_to(target):
            raise ValueError(f"member {name!r} would be written outside the archive folder")
        data = read()
        total += len(data)
        if total > MAX_EXTRACTED_BYTES:
            raise ValueError(f"more than {MAX_EXTRACTED_BYTES // 1024**3} GB when extracted")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)


def _archive_members(path: Path):
    """(name, read function) for each regular file in a zip or tar archive."""
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, (lambda info=info: archive.read(info))
        return
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile():
                yield member.name, (lambda member=member: archive.extractfile(member).read())


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lmforge-ingest-") as folder:
        yield Path(folder)
