"""Finding and reading the user's documents: paths in, `Document`s (text + where it came from) out."""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("lmforge.data")

# Folders that hold tooling or generated files, never the user's writing.
SKIPPED_DIR_NAMES = frozenset({".git", "__pycache__", "node_modules", ".venv", "venv", "site-packages"})

# A NUL byte this early is a reliable sign of a binary file (images, archives, compiled code).
BINARY_SNIFF_BYTES = 8192

# Parts of the standard library left out of the demo corpus: test suites are huge and repetitive,
# and the others are applications or legacy tools rather than representative library code.
DEMO_EXCLUDED_DIR_NAMES = frozenset({"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"})
DEMO_MAX_FILE_BYTES = 200_000


@dataclass(frozen=True)
class Document:
    """One document's text and where it came from (a file path)."""

    text: str
    source: str


def source_list(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """`sources` as a list of Paths, with ~ expanded. A single path is accepted too (a bare string
    would otherwise be iterated character by character)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    return [Path(source).expanduser() for source in sources]


def iter_files(sources: str | Path | Sequence[str | Path]) -> Iterator[Path]:
    """Yield every file named in `sources`, walking folders recursively.

    Sources are visited in the given order; each folder's files come sorted by relative path, so the
    order (and everything derived from it, like the train/val split) is the same on every run.
    Hidden files and folders and tooling folders (.git, .venv, node_modules, ...) are skipped.
    """
    for path in source_list(sources):
        if path.is_dir():
            yield from _walk_folder(path)
        elif path.is_file():
            yield path
        else:
            raise ValueError(f"source {str(path)!r} does not exist; pass existing files or folders")


def _walk_folder(folder: Path) -> Iterator[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Pruning `dirnames` in place stops os.walk from descending into skipped folders at all.
        dirnames[:] = [name for name in dirnames if not _is_skipped_dir(name)]
        found.extend(Path(dirpath, name) for name in filenames if not name.startswith("."))
    yield from sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _is_skipped_dir(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIR_NAMES


def read_file(path: Path) -> Document | None:
    """Read one file as a `Document`, or return None (with a warning) when it holds no usable text.

    This is the single place that turns a file into text; readers for other formats plug in here.
    """
    data = path.read_bytes()
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        logger.warning("skipping %s: looks like a binary file", path)
        return None
    text = _decode_text(data)
    if not text.strip():
        logger.warning("skipping %s: the file is empty", path)
        return None
    return Document(text=text, source=str(path))


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # latin-1 maps every byte to a character, so older 8-bit text files still load.
        return data.decode("latin-1")


def read_documents(sources: str | Path | Sequence[str | Path]) -> Iterator[Document]:
    """Yield one `Document` per readable file in `sources`, in `iter_files` order."""
    for path in iter_files(sources):
        document = read_file(path)
        if document is not None:
            yield document


def default_corpus_files(max_bytes: int = 3_000_000) -> list[Path]:
    """The built-in demo corpus: up to `max_bytes` of the running Python's standard-library source.

    Files are taken in the order of a hash of their path, which spreads the picks over the whole
    standard library instead of filling the budget with the first few packages alphabetically.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = sorted(_demo_candidates(stdlib), key=lambda path: _path_hash(path, stdlib))
    chosen, total = [], 0
    for path in candidates:
        size = path.stat().st_size
        if total + size <= max_bytes:
            chosen.append(path)
            total += size
    return sorted(chosen)


def _demo_candidates(stdlib: Path) -> Iterator[Path]:
    for path in iter_files([stdlib]):
        in_excluded_dir = any(part in DEMO_EXCLUDED_DIR_NAMES for part in path.relative_to(stdlib).parts[:-1])
        size = path.stat().st_size
        if path.suffix == ".py" and not in_excluded_dir and 0 < size <= DEMO_MAX_FILE_BYTES:
            yield path


def _path_hash(path: Path, root: Path) -> str:
    return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()
