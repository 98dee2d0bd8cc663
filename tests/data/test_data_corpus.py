"""Tests for lmforge.data.corpus: the built-in demo corpus."""

import logging
import sysconfig
from pathlib import Path

import pytest

from lmforge.data.corpus import default_corpus_files


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

    assert files, "the standard library should provide some files"
    assert files == default_corpus_files(max_bytes=cap)
    assert files == sorted(files)
    assert all(path.suffix == ".py" for path in files)
    assert sum(path.stat().st_size for path in files) <= cap
    excluded = {"site-packages", "test", "tests"}
    assert not any(excluded & set(path.parts) for path in files)


def test_default_corpus_files_spreads_over_the_stdlib():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = default_corpus_files(max_bytes=300_000)
    top_level_names = [path.relative_to(stdlib).parts[0].lower() for path in files]
    # Alphabetical picking would fill this budget entirely with modules from the start of the alphabet.
    assert any(name < "m" for name in top_level_names)
    assert any(name >= "m" for name in top_level_names)
