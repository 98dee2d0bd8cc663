"""Where training text comes from when the user names none: the built-in demo corpus, plus path helpers.

Reading documents of every format is the ingest package's job (lmforge.ingest).
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.ingest.walk import iter_paths

# Parts of the standard library left out of the demo corpus: test suites are huge and repetitive, and
# site-packages is whatever the user installed. (IDLE, lib2to3 and the turtle demos are kept: a 5-minute
# run sees the corpus about twice over, and more real code means less memorising of the same files.)
DEMO_EXCLUDED_DIR_NAMES = frozenset({"site-packages", "test", "tests"})
DEMO_MAX_FILE_BYTES = 200_000


def source_list(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """`sources` as a list of Paths, with ~ expanded. A single path is accepted too (a bare string
    would otherwise be iterated character by character)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    return [Path(source).expanduser() for source in sources]


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
    for path in iter_paths(stdlib):
        in_excluded_dir = any(part in DEMO_EXCLUDED_DIR_NAMES for part in path.relative_to(stdlib).parts[:-1])
        size = path.stat().st_size
        if path.suffix == ".py" and not in_excluded_dir and 0 < size <= DEMO_MAX_FILE_BYTES:
            yield path


def _path_hash(path: Path, root: Path) -> str:
    return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()
