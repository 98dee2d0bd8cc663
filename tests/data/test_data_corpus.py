"""Tests for lmforge.data.corpus: the built-in demo corpus."""

import logging
from pathlib import Path

import pytest

from lmforge.data.corpus import DEMO_EXCLUDED_DIR_NAMES, default_corpus_files, demo_source_roots


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_default_corpus_files_is_deterministic_capped_python_source():
    cap = 300_000
    files = default_corpus_files(max_bytes=cap)

    assert files, "the standard library and torch should provide some files"
    assert files == default_corpus_files(max_bytes=cap)
    assert files == sorted(files)
    assert all(path.suffix == ".py" for path in files)
    assert sum(path.stat().st_size for path in files) <= cap
    roots = demo_source_roots().values()
    for path in files:
        # The innermost root: outside a virtual environment torch's folder lies inside the stdlib's.
        root = max((root for root in roots if path.is_relative_to(root)), key=lambda root: len(root.parts))
        assert not {"site-packages", "test", "tests", "testing"} & set(path.relative_to(root).parts[:-1]), path


def test_default_corpus_files_spreads_over_both_trees_and_the_alphabet():
    stdlib, torch_root = (demo_source_roots()[name] for name in ("stdlib", "torch"))
    files = default_corpus_files(max_bytes=600_000)
    from_stdlib = [path for path in files if path.is_relative_to(stdlib) and not path.is_relative_to(torch_root)]
    from_torch = [path for path in files if path.is_relative_to(torch_root)]
    assert from_stdlib and from_torch
    top_level_names = [path.relative_to(stdlib).parts[0].lower() for path in from_stdlib]
    # Alphabetical picking would fill this budget entirely with modules from the start of the alphabet.
    assert any(name < "m" for name in top_level_names)
    assert any(name >= "m" for name in top_level_names)


def test_the_default_cap_takes_every_candidate_of_both_trees():
    """The default cap is meant to take everything (a smaller one samples): check it still does."""
    from lmforge.data.config import DataConfig
    from lmforge.ingest.walk import iter_paths  # ingest's walk: no hidden files, no venv/node_modules folders

    files = set(default_corpus_files(DataConfig().default_corpus_bytes))
    for root in demo_source_roots().values():
        candidates = {path for path in iter_paths(root) if path.suffix == ".py"
                      and not DEMO_EXCLUDED_DIR_NAMES & set(path.relative_to(root).parts[:-1])
                      and 0 < path.stat().st_size <= 200_000}
        assert candidates <= files, sorted(candidates - files)[:3]
