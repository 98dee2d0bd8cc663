"""Shared fixture for the distributed tests: a small char-level corpus, prepared once."""

import random

import pytest

from lmforge.data.prepare import prepare

WORDS = "the a cat dog sat ran on under mat log and then quickly slowly big small red blue".split()


def sentences(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(n))


@pytest.fixture(scope="session")
def dist_corpus(tmp_path_factory):
    """40 short documents of random sentences (varied, so deduplication keeps them all)."""
    src = tmp_path_factory.mktemp("dist_corpus")
    for i in range(40):
        (src / f"doc{i:02d}.txt").write_text(sentences(30, seed=i))
    return src


@pytest.fixture(scope="session")
def dist_data(dist_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_prepared") / "data"
    prepare([dist_corpus], out, tokenizer="char", val_fraction=0.15, seed=0)
    return out
