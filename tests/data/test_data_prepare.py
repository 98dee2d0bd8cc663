"""Tests for lmforge.data.prepare: tokenizing documents into train/val token files, and the cache."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.loader import TokenBatches
from lmforge.data.prepare import ensure_prepared, prepare
from lmforge.data.shards import open_tokens, read_meta
from lmforge.data.prepare import tail_start
from lmforge.ingest.config import CleanConfig, IngestConfig
from lmforge.tokenizer import load_tokenizer

# The submodule, not the function `lmforge.data.prepare` that shadows it as a package attribute.
prepare_module = importlib.import_module("lmforge.data.prepare")

DOCUMENT_COUNT = 30
# These tests check tokenizing and splitting, so cleaning must leave the tiny test documents as they are.
RAW = IngestConfig(workers=1, clean=CleanConfig.off())


def document_text(index: int) -> str:
    return f"Document number {index}.\n" + "the quick brown fox jumps\n" * (index % 4 + 1)


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for index in range(DOCUMENT_COUNT):
        (folder / f"doc{index:02d}.txt").write_text(document_text(index), encoding="utf-8")
    return folder


def decoded_split(data_dir: Path, split: str) -> str:
    return load_tokenizer(data_dir).decode(open_tokens(data_dir, split).tolist())


def test_prepare_writes_consistent_files(docs_dir, tmp_path):
    out = tmp_path / "prepared"
    meta = prepare([docs_dir], out, tokenizer="char", val_fraction=0.2, ingest_cfg=RAW)

    tokenizer = load_tokenizer(out)
    expected_tokens = sum(len(tokenizer.encode(document_text(i))) + 1 for i in range(DOCUMENT_COUNT))
    assert meta == read_meta(out)
    assert meta["split"] == "stratified"
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char"
    assert meta["eot_id"] == tokenizer.eot_id and meta["vocab_size"] == tokenizer.vocab_size
    assert meta["train_tokens"] + meta["val_tokens"] == expected_tokens
    assert meta["documents"] == DOCUMENT_COUNT
    assert meta["documents_by_split"]["train"] > 0 and meta["documents_by_split"]["val"] > 0
    assert (out / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert (out / "val.bin").stat().st_size == 2 * meta["val_tokens"]
    for split in ("train", "val"):
        tokens = open_tokens(out, split)
        assert np.count_nonzero(tokens == tokenizer.eot_id) == meta["documents_by_split"][split]
        assert tokens[-1] == tokenizer.eot_id
    records = [json.loads(line) for line in (out / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == [document_text(i) for i in range(DOCUMENT_COUNT)]
    assert records[0]["format"] == "text" and records[0]["source"].endswith("doc00.txt")
    assert not list(tmp_path.glob(".*tmp*")), "the temporary folder must be gone"


def test_every_document_lands_whole_in_exactly_one_split(docs_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare([docs_dir], out, tokenizer="char", val_fraction=0.2, ingest_cfg=RAW)
    train, val = decoded_split(out, "train"), decoded_split(out, "val")
    for index in range(DOCUMENT_COUNT):
        header = f"Document number {index}."
        assert (document_text(index) in train) != (document_text(index) in val)
        assert (header in train) != (header in val)


def test_split_is_reproducible_and_depends_on_seed(docs_dir, tmp_path):
    first = prepare([docs_dir], tmp_path / "a", tokenizer="char", seed=1, ingest_cfg=RAW)
    again = prepare([docs_dir], tmp_path / "b", tokenizer="char", seed=1, ingest_cfg=RAW)
    other = prepare([docs_dir], tmp_path / "c", tokenizer="char", seed=2, ingest_cfg=RAW)
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()
    assert first["val_tokens"] == again["val_tokens"]
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c" / "val.bin").read_bytes()
    assert other["train_tokens"] + other["val_tokens"] == first["train_tokens"] + first["val_tokens"]


def test_binary_and_empty_files_are_skipped(docs_dir, tmp_path):
    (docs_dir / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (docs_dir / "empty.txt").write_text("")
    meta = prepare([docs_dir], tmp_path / "prepared", tokenizer="char", ingest_cfg=RAW)
    assert meta["documents"] == DOCUMENT_COUNT


def test_single_document_is_split_by_its_tail(tmp_path):
    lines = [f"line {i} of the only document" for i in range(100)]
    text = "\n".join(lines) + "\n"
    source = tmp_path / "book.txt"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "prepared"

    meta = prepare([source], out, tokenizer="char", val_fraction=0.1, ingest_cfg=RAW)

    train, val = decoded_split(out, "train"), decoded_split(out, "val")
    eot = load_tokenizer(out).decode([meta["eot_id"]])
    assert meta["split"] == "document_tail"
    assert meta["documents_by_split"] == {"train": 1, "val": 1}
    assert train.removesuffix(eot) + val.removesuffix(eot) == text
    assert train.removesuffix(eot).endswith("\n"), "the cut must fall on a line break"
    assert val.startswith("line 90 ")


def test_tail_start_cuts_at_the_nearest_line_break():
    text = "aaaa\nbbbb\ncccc\ndddd\n"
    assert tail_start(text, 0.25) == 15  # the last line
    assert tail_start("no line breaks here", 0.5) == 10  # one line: cut mid-line rather than give val nothing


def test_zero_val_fraction_gives_an_empty_val_split(docs_dir, tmp_path):
    out = tmp_path / "prepared"
    meta = prepare([docs_dir], out, tokenizer="char", val_fraction=0.0, ingest_cfg=RAW)
    assert meta["val_tokens"] == 0 and meta["documents_by_split"]["val"] == 0
    assert len(open_tokens(out, "val")) == 0
    assert list(TokenBatches(out, "val", block_size=8, batch_size=2).eval_batches(None)) == []


def test_no_documents_is_an_error_and_leaves_nothing_behind(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n")
    with pytest.raises(ValueError, match="no document was kept.*empty file"):
        prepare([empty], tmp_path / "prepared", tokenizer="char", ingest_cfg=RAW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_interrupted_prepare_leaves_nothing_behind(docs_dir, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "build_tokenizer", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare([docs_dir], tmp_path / "prepared", tokenizer="char", ingest_cfg=RAW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_prepare_refuses_to_overwrite_an_unrelated_folder(docs_dir, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        prepare([docs_dir], tmp_path / "precious", tokenizer="char", ingest_cfg=RAW)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_invalid_val_fraction_is_rejected(docs_dir, tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        prepare([docs_dir], tmp_path / "prepared", tokenizer="char", val_fraction=1.0, ingest_cfg=RAW)


@pytest.fixture
def prepare_calls(monkeypatch) -> list:
    """Record every call ensure_prepared makes to prepare, while still preparing."""
    calls = []
    real_prepare = prepare_module.prepare

    def counting_prepare(*args, **kwargs):
        calls.append(args)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare", counting_prepare)
    return calls


def test_ensure_prepared_reuses_the_cache(docs_dir, tmp_path, prepare_calls, capsys):
    cache = tmp_path / "cache"
    first = ensure_prepared([docs_dir], cache, tokenizer="char", ingest_cfg=RAW)
    second = ensure_prepared([docs_dir], cache, tokenizer="char", ingest_cfg=RAW)

    assert first == second and len(prepare_calls) == 1
    assert "reusing" in capsys.readouterr().out.splitlines()[-1]
    assert read_meta(second)["train_tokens"] > 0


def test_ensure_prepared_prepares_again_when_content_or_settings_change(docs_dir, tmp_path, prepare_calls):
    cache = tmp_path / "cache"
    original = ensure_prepared([docs_dir], cache, tokenizer="char", ingest_cfg=RAW)
    (docs_dir / "doc03.txt").write_text("edited text\n", encoding="utf-8")
    edited = ensure_prepared([docs_dir], cache, tokenizer="char", ingest_cfg=RAW)
    other_seed = ensure_prepared([docs_dir], cache, tokenizer="char", seed=7, ingest_cfg=RAW)

    assert len({original, edited, other_seed}) == 3 and len(prepare_calls) == 3
    assert "edited text" in decoded_split(edited, "train") + decoded_split(edited, "val")


def test_ensure_prepared_uses_a_prepared_folder_as_is(docs_dir, tmp_path, prepare_calls):
    prepared = tmp_path / "prepared"
    prepare([docs_dir], prepared, tokenizer="char", ingest_cfg=RAW)
    assert ensure_prepared([prepared], tmp_path / "cache", tokenizer="bpe") == prepared
    assert prepare_calls == [] and not (tmp_path / "cache").exists()


def test_prepare_with_trained_bpe(docs_dir, tmp_path):
    meta = prepare([docs_dir], tmp_path / "prepared", tokenizer="bpe", vocab_size=300, ingest_cfg=RAW)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 300
    assert "Document number 7." in decoded_split(tmp_path / "prepared", "train") + decoded_split(
        tmp_path / "prepared", "val"
    )


def test_the_stratified_split_gives_every_stratum_and_size_range_its_share():
    from lmforge.data.prepare import stratified_val_documents

    # 12 documents in folder a (sizes 1..12) and 8 in folder b (sizes 1..8), listed interleaved, all
    # compressing alike (the compressed length is a third of the length).
    documents = [("text:a", size * 90, size * 30) for size in range(1, 13)]
    documents += [("text:b", size * 90, size * 30) for size in range(1, 9)]
    order = [0, 12, 1, 13, 2, 14, 3, 15, 4, 16, 5, 17, 6, 18, 7, 19, 8, 9, 10, 11]
    documents = [documents[i] for i in order]
    picks = set()
    for seed in range(20):
        val = stratified_val_documents(documents, 0.25, seed)
        chosen = [documents[i] for i in val]
        # Every 4th document in (folder, size) order: 3 of a's 12, 2 of b's 8, one from each size range.
        a_sizes = sorted(size // 90 for stratum, size, _ in chosen if stratum == "text:a")
        b_sizes = sorted(size // 90 for stratum, size, _ in chosen if stratum == "text:b")
        assert len(a_sizes) == 3 and len(b_sizes) == 2
        assert [(size - 1) // 4 for size in a_sizes] == [0, 1, 2] and [(size - 1) // 4 for size in b_sizes] == [0, 1]
        assert val == stratified_val_documents(documents, 0.25, seed)  # stable for a seed
        picks.add(frozenset(val))
    assert len(picks) > 1  # and the seed moves it
    assert stratified_val_documents(documents, 0.0, 1) == set()


def test_the_split_balances_how_hard_validation_is_to_predict():
    import random

    from lmforge.data.prepare import _systematic_sample, stratified_val_documents

    rng = random.Random(0)
    # 200 documents of one folder; how well each compresses (a stand-in for how hard it is) varies a lot.
    documents = [("code:lib", length, int(length * rng.uniform(0.15, 0.6)))
                 for length in (rng.randint(500, 50_000) for _ in range(200))]

    def bits_gap(val):  # compressed bits per character, val minus train, computed here from scratch
        inside = [d for i, d in enumerate(documents) if i in val]
        outside = [d for i, d in enumerate(documents) if i not in val]
        return abs(sum(d[2] for d in inside) / sum(d[1] for d in inside)
                   - sum(d[2] for d in outside) / sum(d[1] for d in outside))

    plain = [bits_gap(_systematic_sample(documents, 0.1, f"plain:{seed}")) for seed in range(100)]
    chosen = [bits_gap(stratified_val_documents(documents, 0.1, seed)) for seed in range(100)]
    assert sum(chosen) / 100 < 0.25 * sum(plain) / 100  # re-randomisation balances difficulty
