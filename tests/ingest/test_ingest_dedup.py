"""Exact and near-duplicate detection."""

import builtins
import logging
import random

import pytest

from lmforge.ingest.config import CleanConfig
from lmforge.ingest.dedup import Deduplicator

# A made-up vocabulary keeps generated documents unrelated unless a test makes them related.
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in
         ("bar", "cen", "dol", "fim", "gat", "hup", "jis", "kov", "lem", "mur")]


def words(seed: int, n: int = 200) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def test_exact_copy_caught_also_with_other_case_and_whitespace():
    dedup = Deduplicator(CleanConfig())
    text = " ".join(words(1))
    assert dedup.is_duplicate(text) is None
    assert dedup.is_duplicate(text) == "exact"
    assert dedup.is_duplicate("  " + text.upper().replace(" ", " \n\t ")) == "exact"


def test_near_copy_with_three_words_changed_in_200_caught():
    dedup = Deduplicator(CleanConfig())
    original = words(2)
    near = list(original)
    for position in (20, 100, 180):
        near[position] = "changed"
    assert dedup.is_duplicate(" ".join(original)) is None
    assert dedup.is_duplicate(" ".join(near)) == "near"


def test_different_document_on_the_same_topic_not_caught():
    dedup = Deduplicator(CleanConfig())
    rng = random.Random(3)
    topic = VOCAB[:20]  # both documents use the same 20 words, in a different order
    first, second = (" ".join(rng.choices(topic, k=200)) for _ in range(2))
    assert dedup.is_duplicate(first) is None
    assert dedup.is_duplicate(second) is None


def test_half_rewritten_document_not_caught():
    dedup = Deduplicator(CleanConfig())
    original = words(4)
    rewritten = original[:100] + words(5, 100)  # Jaccard of shingles about 0.3
    assert dedup.is_duplicate(" ".join(original)) is None
    assert dedup.is_duplicate(" ".join(rewritten)) is None


def test_short_documents_only_get_the_exact_check():
    dedup = Deduplicator(CleanConfig())
    assert dedup.is_duplicate("just four words here") is None
    assert dedup.is_duplicate("just four words there") is None
    assert dedup.is_duplicate("Just four  words here") == "exact"


def test_switches():
    text, near = " ".join(words(6)), " ".join(words(6)[:-1] + ["changed"])
    no_exact = Deduplicator(CleanConfig(dedup_exact=False))
    assert no_exact.is_duplicate(text) is None
    assert no_exact.is_duplicate(text) == "near"  # a copy is still a near copy
    no_near = Deduplicator(CleanConfig(dedup_near=False))
    assert no_near.is_duplicate(text) is None
    assert no_near.is_duplicate(near) is None
    assert no_near.is_duplicate(text) == "exact"


def test_without_datasketch_only_exact_duplicates_with_a_warning(monkeypatch, caplog):
    real_import = builtins.__import__

    def no_datasketch(name, *args, **kwargs):
        if name == "datasketch":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasketch)
    with caplog.at_level(logging.WARNING, logger="lmforge.ingest"):
        dedup = Deduplicator(CleanConfig())
    assert "datasketch is not installed" in caplog.text
    text = " ".join(words(7))
    assert dedup.is_duplicate(text) is None
    assert dedup.is_duplicate(text.rsplit(" ", 1)[0] + " changed") is None
    assert dedup.is_duplicate(text) == "exact"


def test_many_unrelated_documents_are_never_flagged():
    pytest.importorskip("datasketch")
    docs = [" ".join(words(seed)) for seed in range(1000, 3000)]
    dedup = Deduplicator(CleanConfig())
    assert [dedup.is_duplicate(doc) for doc in docs] == [None] * len(docs)


def test_long_documents_are_hashed_in_batches_with_the_same_result(monkeypatch):
    pytest.importorskip("datasketch")
    import lmforge.ingest.dedup as dedup_module

    original = words(7, n=1000)
    near = list(original)
    near[500] = "changed"
    monkeypatch.setattr(dedup_module, "SHINGLE_BATCH", 64)  # ~16 batches per document
    dedup = Deduplicator(CleanConfig())
    assert dedup.is_duplicate(" ".join(original)) is None
    assert dedup.is_duplicate(" ".join(near)) == "near"
