"""Tests for lmforge.data.loader.TokenBatches: shapes, shuffling, epochs, resume, ranks, evaluation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data.loader import TokenBatches
from lmforge.data.shards import split_path, write_meta

BLOCK = 8
BATCH = 4


def make_dataset(folder: Path, train_tokens: int, val_tokens: int = 0) -> Path:
    """A prepared-dataset folder whose tokens are 0, 1, 2, ...: a window's content reveals where it starts."""
    folder.mkdir(exist_ok=True)
    np.arange(train_tokens, dtype=np.uint16).tofile(split_path(folder, "train"))
    np.arange(val_tokens, dtype=np.uint16).tofile(split_path(folder, "val"))
    write_meta(folder, {"dtype": "uint16"})
    return folder


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", train_tokens=1000, val_tokens=100)


def window_starts(loader: TokenBatches, batches: int) -> list[int]:
    return [start for _ in range(batches) for start in loader.next_batch()[0][:, 0].tolist()]


def test_batches_have_the_right_shape_and_y_is_x_shifted(data_dir):
    x, y = TokenBatches(data_dir, "train", BLOCK, BATCH).next_batch()
    assert x.shape == y.shape == (BATCH, BLOCK)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # tokens are 0, 1, 2, ... so "the next token" is +1


def test_an_epoch_visits_distinct_non_overlapping_windows_in_shuffled_order(data_dir):
    loader = TokenBatches(data_dir, "train", BLOCK, BATCH)
    starts = window_starts(loader, loader.batches_per_epoch)
    assert loader.batches_per_epoch == (1000 - BLOCK) // BLOCK // BATCH
    assert len(set(starts)) == len(starts)
    assert len({start % BLOCK for start in starts}) == 1, "windows sit on one grid (one offset per epoch)"
    assert starts != sorted(starts)


def test_epochs_roll_over_with_a_new_order(data_dir):
    loader = TokenBatches(data_dir, "train", BLOCK, BATCH)
    first_epoch = window_starts(loader, loader.batches_per_epoch)
    assert (loader.epoch, loader.index, loader.epoch_progress) == (1, 0, 1.0)
    second_epoch = window_starts(loader, 1)
    assert loader.epoch_progress == pytest.approx(1 + 1 / loader.batches_per_epoch)
    second_epoch += window_starts(loader, loader.batches_per_epoch - 1)
    assert loader.epoch == 2
    assert second_epoch != first_epoch


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
    assert window_starts(TokenBatches(data_dir, "train", BLOCK, BATCH, seed=3), 5) == window_starts(
        TokenBatches(data_dir, "train", BLOCK, BATCH, seed=3), 5
    )
    assert window_starts(TokenBatches(data_dir, "train", BLOCK, BATCH, seed=3), 5) != window_starts(
        TokenBatches(data_dir, "train", BLOCK, BATCH, seed=4), 5
    )


def test_resume_from_state_dict_continues_exactly(data_dir):
    uninterrupted = TokenBatches(data_dir, "train", BLOCK, BATCH)
    interrupted = TokenBatches(data_dir, "train", BLOCK, BATCH)
    steps_before = uninterrupted.batches_per_epoch - 2  # so the resumed run crosses an epoch boundary
    for _ in range(steps_before):
        uninterrupted.next_batch()
        interrupted.next_batch()
    resumed = TokenBatches(data_dir, "train", BLOCK, BATCH)
    resumed.load_state_dict(interrupted.state_dict())

    for _ in range(5):
        expected_x, expected_y = uninterrupted.next_batch()
        x, y = resumed.next_batch()
        assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_resuming_at_an_impossible_position_is_rejected(data_dir):
    loader = TokenBatches(data_dir, "train", BLOCK, BATCH)
    with pytest.raises(ValueError, match="same data, block_size and batch_size"):
        loader.load_state_dict({"epoch": 0, "index": loader.batches_per_epoch})


def test_ranks_see_disjoint_data(data_dir):
    rank0 = TokenBatches(data_dir, "train", BLOCK, BATCH, rank=0, world_size=2)
    rank1 = TokenBatches(data_dir, "train", BLOCK, BATCH, rank=1, world_size=2)
    single = TokenBatches(data_dir, "train", BLOCK, BATCH)
    assert rank0.batches_per_epoch == rank1.batches_per_epoch == single.batches_per_epoch // 2
    starts0 = window_starts(rank0, rank0.batches_per_epoch)
    starts1 = window_starts(rank1, rank1.batches_per_epoch)
    assert not set(starts0) & set(starts1)
    assert set(starts0) | set(starts1) <= set(window_starts(single, single.batches_per_epoch))


def test_too_little_data_says_how_much_there_is(tmp_path):
    loader = TokenBatches(make_dataset(tmp_path, train_tokens=30), "train", BLOCK, BATCH)
    with pytest.raises(ValueError, match=r"30 tokens.*smaller block_size or batch_size"):
        loader.next_batch()


@pytest.mark.parametrize("bad", [{"block_size": 0}, {"batch_size": 0}, {"rank": 2, "world_size": 2}])
def test_invalid_settings_are_rejected(data_dir, bad):
    settings = {"block_size": BLOCK, "batch_size": BATCH, **bad}
    with pytest.raises(ValueError):
        TokenBatches(data_dir, "train", **settings)


def test_eval_batches_are_consecutive_deterministic_and_capped(data_dir):
    loader = TokenBatches(data_dir, "val", BLOCK, BATCH)
    batches = list(loader.eval_batches(None))
    window_count = (100 - 1) // BLOCK  # 12 windows: 3 full batches
    assert len(batches) == window_count // BATCH
    starts = [start for x, _ in batches for start in x[:, 0].tolist()]
    assert starts == [BLOCK * i for i in range(window_count)]
    assert all(torch.equal(y, x + 1) for x, y in batches)
    again = list(loader.eval_batches(None))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(loader.eval_batches(2))) == 2


def test_a_partial_evaluation_spreads_its_windows_over_the_whole_split(data_dir):
    loader = TokenBatches(data_dir, "val", BLOCK, BATCH)  # 12 windows
    starts = [start for x, _ in loader.eval_batches(1) for start in x[:, 0].tolist()]
    assert starts == [BLOCK * i for i in (0, 3, 6, 9)]  # windows 0, 12/4, 2*12/4, 3*12/4: even strides
    again = [start for x, _ in loader.eval_batches(1) for start in x[:, 0].tolist()]
    assert again == starts


def test_eval_batches_allow_a_partial_last_batch_and_an_empty_split(tmp_path):
    folder = make_dataset(tmp_path, train_tokens=0, val_tokens=6 * BLOCK + 1)
    sizes = [len(x) for x, _ in TokenBatches(folder, "val", BLOCK, BATCH).eval_batches(None)]
    assert sizes == [BATCH, 2]
    assert list(TokenBatches(folder, "train", BLOCK, BATCH).eval_batches(None)) == []
