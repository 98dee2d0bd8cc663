"""Shared fixtures for the training tests: a small prepared corpus and a tiny model."""

import random

import pytest

from lmforge.data.prepare import prepare

WORDS = "the a cat dog sat ran on under mat log and then quickly slowly big small red blue".split()


def synthetic_text(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(n_sentences))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A char-level dataset of ~40 documents (split by document) in a prepared folder."""
    src = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (src / f"doc{i:02d}.txt").write_text(synthetic_text(30, seed=i))
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([src], out, tokenizer="char", val_fraction=0.15, seed=0)
    return out
