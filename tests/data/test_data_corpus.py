"""Tests for lmforge.data.corpus: finding files, reading documents, the demo corpus."""

import logging
import sysconfig
from pathlib import Path

import pytest

from lmforge.data.corpus import default_corpus_files, iter_files, read_documents


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_iter_files_walks_folders_sorted_and_skips_tooling(tmp_path):
    root = tmp_path / "docs"
    for name in ["b.txt", "a.txt", "sub/c.txt", "sub/deeper/d.txt"]:
        write(root / name, "x")
    for name in [".hidden.txt", ".git/config", "__pycache__/m.pyc", "node_modules/p.js", ".venv/lib.py",
                 "venv/lib.py", "site-packages/x.py", ".secret/notes.txt"]:
        write(root / name, "skip me")
    single = write(tmp_path / "single.txt", "x")

    found = list(iter_files([single, root]))

    assert found == [single, root / "a.txt", root / "b.txt", root / "sub/c.txt", root / "sub/deeper/d.txt"]


def test_iter_files_accepts_a_single_path(tmp_path):
    file = write(tmp_path / "one.txt", "x")
    assert list(iter_files(str(file))) == [file]


def test_iter_files_missing_path_names_it(tmp_path):
    with pytest.raises(ValueError, match="nowhere.txt"):
        list(iter_files([tmp_path / "nowhere.txt"]))


def test_read_documents_decodes_text_and_skips_binary_and_empty(tmp_path, caplog):
    write(tmp_path / "1_utf8.txt", "héllo wörld")
    write(tmp_path / "2_latin1.txt", "café".encode("latin-1"))
    write(tmp_path / "3_binary.bin", b"PK\x03\x04\x00\x00binary")
    write(tmp_path / "4_empty.txt", "")
    write(tmp_path / "5_blank.txt", "  \n\n")

    with caplog.at_level(logging.WARNING, logger="lmforge.data"):
        documents = list(read_documents([tmp_path]))

    assert [doc.text for doc in documents] == ["héllo wörld", "café"]
    assert documents[0].source == str(tmp_path / "1_utf8.txt")
    warned = caplog.text
    assert "3_binary.bin" in warned and "4_empty.txt" in warned and "5_blank.txt" in warned


def test_default_corpus_files_is_deterministic_capped_python_source():
    cap = 300_000
    files = default_corpus_files(max_bytes=cap)

    assert files, "the standard library should provide some files"
    assert files == default_corpus_files(max_bytes=cap)
    assert files == sorted(files)
    assert all(path.suffix == ".py" for path in files)
    assert sum(path.stat().st_size for path in files) <= cap
    excluded = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"}
    assert not any(excluded & set(path.parts) for path in files)


def test_default_corpus_files_spreads_over_the_stdlib():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = default_corpus_files(max_bytes=300_000)
    top_level_names = [path.relative_to(stdlib).parts[0].lower() for path in files]
    # Alphabetical picking would fill this budget entirely with modules from the start of the alphabet.
    assert any(name < "m" for name in top_level_names)
    assert any(name >= "m" for name in top_level_names)
