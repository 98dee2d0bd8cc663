"""Tests for lmforge.data.shards: token dtypes, writing and reading split files and meta.json."""

import numpy as np
import pytest

from lmforge.data.shards import (
    TokenFileWriter,
    is_prepared,
    open_tokens,
    read_meta,
    split_path,
    token_dtype,
    write_meta,
)


@pytest.mark.parametrize(
    ("vocab_size", "expected"),
    [(83, np.uint16), (50257, np.uint16), (65536, np.uint16), (65537, np.uint32), (200_000, np.uint32)],
)
def test_token_dtype_is_smallest_that_fits(vocab_size, expected):
    assert token_dtype(vocab_size) == np.dtype(expected)


def test_written_tokens_read_back_with_eot_after_each_document(tmp_path):
    dtype = token_dtype(70_000)
    writer = TokenFileWriter(split_path(tmp_path, "train"), dtype)
    writer.append_document([1, 2, 69_999], eot_id=0)
    writer.append_document([5], eot_id=0)
    writer.close()
    split_path(tmp_path, "val").touch()
    write_meta(tmp_path, {"dtype": dtype.name})

    tokens = open_tokens(tmp_path, "train")

    assert (writer.tokens, writer.documents) == (6, 2)
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
    assert tokens.tolist() == [1, 2, 69_999, 0, 5, 0]
    assert is_prepared(tmp_path)
    assert len(open_tokens(tmp_path, "val")) == 0


def test_unknown_split_and_missing_meta_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'test'"):
        split_path(tmp_path, "test")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        read_meta(tmp_path)
    assert not is_prepared(tmp_path)
