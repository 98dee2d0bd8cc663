"""lmforge.eval: the numbers `evaluate` reports, the held-out windows, and the `lmforge eval` verb."""

import json
import math

import pytest
import torch
import torch.nn as nn

from lmforge.cli.main import main
from lmforge.data.prepare import prepare
from lmforge.data.shards import read_meta
from lmforge.eval.perplexity import check_same_tokenizer, evaluate, heldout_batches
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer
from lmforge.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from lmforge.train.objectives import IGNORE_INDEX

TEXT = ("Evaluation scores a model on text it never trained on. The loss is the mean cross-entropy "
        "per token, perplexity is its exponential, and accuracy counts the positions whose most "
        "likely token is the one that actually comes next.\n")
BLOCK_SIZE = 8


class FixedLogits(nn.Module):
    """Called like GPT (token ids (B, T) -> logits (B, T, V)), but returns the same logits for any input."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits  # (T, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[: idx.size(1)].expand(idx.size(0), -1, -1)


def cross_entropy_by_hand(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_evaluate_matches_hand_computed_loss_and_accuracy():
    rows = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]]
    x = torch.zeros(2, 3, dtype=torch.long)
    y = torch.tensor([[0, 0, 2], [0, IGNORE_INDEX, 0]])  # argmax is 0, 1, 2: right, wrong, right / right, -, wrong
    result = evaluate(FixedLogits(torch.tensor(rows)), [(x, y)], "cpu")

    scored = [(0, 0), (1, 0), (2, 2), (0, 0), (2, 0)]  # (position, target); the ignored one left out
    expected_loss = sum(cross_entropy_by_hand(rows[t], target) for t, target in scored) / len(scored)
    assert result.tokens == 5
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.perplexity == pytest.approx(math.exp(expected_loss), rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    vocab = 50
    batches = [(torch.zeros(4, 6, dtype=torch.long), torch.randint(vocab, (4, 6))) for _ in range(3)]
    result = evaluate(FixedLogits(torch.zeros(6, vocab)), batches, "cpu")
    assert result.perplexity == pytest.approx(vocab, rel=1e-5)
    assert result.tokens == 3 * 4 * 6


def test_evaluate_restores_training_mode():
    model = FixedLogits(torch.zeros(4, 3))
    model.train()
    evaluate(model, [(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))], "cpu")
    assert model.training


# ---- a tiny checkpoint and data -------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=BLOCK_SIZE))
    return save_checkpoint(tmp_path / "run", "best", model, tokenizer, meta={})


@pytest.fixture
def raw_text(tmp_path):
    path = tmp_path / "heldout" / "essay.txt"
    path.parent.mkdir()
    path.write_text(TEXT * 3)
    return path


@pytest.fixture
def prepared(tmp_path, raw_text, checkpoint):
    out = tmp_path / "prepared"
    prepare([raw_text], out, tokenizer=str(checkpoint), val_fraction=0.5)
    return out


def test_heldout_batches_are_non_overlapping_windows(prepared):
    batches, count = heldout_batches(prepared, "val", BLOCK_SIZE, batch_size=3)
    batches = list(batches)
    tokens = torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in batches])  # each window's block_size + 1 tokens
    assert len(batches) == count
    assert torch.equal(tokens[1:, 0], tokens[:-1, -1])  # window i+1 starts on the token window i ends on
    limited, limited_count = heldout_batches(prepared, "all", BLOCK_SIZE, batch_size=3, max_batches=2)
    assert limited_count == 2 and len(list(limited)) == 2


def test_too_short_split_is_a_clear_error(prepared):
    with pytest.raises(ValueError, match="too few to evaluate"):
        heldout_batches(prepared, "val", block_size=10_000, batch_size=1)


def run_eval(capfd, *args) -> tuple[int, str, str]:
    capfd.readouterr()  # drop what the fixtures printed
    code = main(["eval", *map(str, args)])
    out, err = capfd.readouterr()
    return code, out, err


def test_cli_on_raw_files_scores_the_whole_text(capfd, checkpoint, raw_text):
    code, out, _ = run_eval(capfd, checkpoint, "--data", raw_text.parent, "--json", "--batch-size", "2")
    assert code == 0
    report = json.loads(out)  # stdout is exactly one JSON object: preparation chatter goes to stderr
    assert report["split"] == "train"
    meta = read_meta(report["data"])  # prepared into the cache with the checkpoint's tokenizer, all into train
    assert meta["val_tokens"] == 0 and meta["vocab_size"] == CharTokenizer.train([TEXT]).vocab_size
    assert report["tokens"] == (meta["train_tokens"] - 1) // BLOCK_SIZE * BLOCK_SIZE  # every whole window
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert 0 <= report["accuracy"] <= 1


def test_cli_on_prepared_folder_matches_the_library(capfd, checkpoint, prepared):
    code, out, _ = run_eval(capfd, checkpoint, "--data", prepared, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["split"] == "val"
    batches, _ = heldout_batches(prepared, "val", BLOCK_SIZE, batch_size=8)
    expected = evaluate(load_model_from_checkpoint(checkpoint), batches, "cpu")
    assert report["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert report["tokens"] == expected.tokens


def test_cli_text_output_and_max_batches(capfd, checkpoint, prepared):
    code, out, _ = run_eval(capfd, checkpoint, "--data", prepared, "--split", "all", "--batch-size", "1",
                            "--max-batches", "3")
    assert code == 0
    assert "perplexity" in out and f"{3 * BLOCK_SIZE:,} tokens" in out


def test_prepared_folder_must_use_the_checkpoint_tokenizer(capfd, tmp_path, checkpoint, raw_text):
    other = tmp_path / "other"
    prepare([raw_text], other, tokenizer="char", val_fraction=0.5)  # learned from TEXT * 3: same characters...
    code, _, err = run_eval(capfd, checkpoint, "--data", other)
    assert code == 0  # ...so it is the same tokenizer, and accepted
    (tmp_path / "abc").mkdir()
    CharTokenizer(list("abc")).save(tmp_path / "abc")
    small = tmp_path / "small"
    prepare([raw_text], small, tokenizer=str(tmp_path / "abc"), val_fraction=0.5)
    code, _, err = run_eval(capfd, checkpoint, "--data", small)
    assert code == 2
    assert "lmforge eval: error:" in err and "vocabulary of 5 tokens" in err


def test_same_size_but_different_tokenizer_is_refused(tmp_path, checkpoint, raw_text):
    chars = CharTokenizer.train([TEXT]).chars
    shuffled = tmp_path / "shuffled"
    CharTokenizer(chars[::-1]).save(shuffled)  # same vocabulary size, every id means another character
    data = tmp_path / "data"
    prepare([raw_text], data, tokenizer=str(shuffled), val_fraction=0.5)
    with pytest.raises(ValueError, match="different tokenizer"):
        check_same_tokenizer(data, CharTokenizer.train([TEXT]))
