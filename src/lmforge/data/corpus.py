"""Where training text comes from when the user names none: the built-in demo corpus, plus path helpers.

Reading documents of every format is the ingest package's job (lmforge.ingest).
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.ingest.walk import iter_paths

# The demo corpus is Python source already on every machine that runs lmforge: the standard library and
# PyTorch's own Python files (torch is a dependency). The standard library alone (about 12 MB, 2.5 M
# tokens) is seen two or three times over in a 5-minute run on a 2-core CPU, and the model then learns
# its files by heart: the validation loss ends 0.3 above the training loss. With PyTorch's source beside
# it (about 34 MB more) the same run sees half of the corpus once and the two losses stay together.
# Left out: test suites (huge and repetitive), site-packages (whatever the user installed) and very
# large files (mostly generated).
DEMO_EXCLUDED_DIR_NAMES = frozenset({"site-packages", "test", "tests", "testing"})
DEMO_MAX_FILE_BYTES = 200_000


def source_list(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """`sources` as a list of Paths, with ~ expanded. A single path is accepted too (a bare string
    would otherwise be iterated character by character)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    return [Path(source).expanduser() for source in sources]


def default_corpus_files(max_bytes: int = 3_000_000) -> list[Path]:
    """The built-in demo corpus: up to `max_bytes` of Python source from the standard library and PyTorch.

    Files are taken in the order of a hash of their path, which spreads the picks over both trees and all
    their packages instead of filling the budget with the first few packages alphabetically.
    """
    candidates = sorted(_demo_candidates(), key=lambda pair: _name_hash(pair[1]))
    chosen, total = [], 0
    for path, _name in candidates:
        size = path.stat().st_size
        if total + size <= max_bytes:
            chosen.append(path)
            total += size
    return sorted(chosen)


def demo_source_roots() -> dict[str, Path]:
    """The folders the demo corpus is drawn from, by name."""
    import torch  # late: reading the corpus list should not cost torch's import elsewhere

    return {"stdlib": Path(sysconfig.get_paths()["stdlib"]), "torch": Path(torch.__file__).parent}


def _demo_candidates() -> Iterator[tuple[Path, str]]:
    """(path, its name for the hash order: source/relative path) of every file the demo may use."""
    for name, root in demo_source_roots().items():
        for path in iter_paths(root):
            relative = path.relative_to(root)
            in_excluded_dir = any(part in DEMO_EXCLUDED_DIR_NAMES for part in relative.parts[:-1])
            size = path.stat().st_size
            if path.suffix == ".py" and not in_excluded_dir and 0 < size <= DEMO_MAX_FILE_BYTES:
                yield path, f"{name}/{relative.as_posix()}"


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()
