"""The on-disk format of a prepared dataset: one flat binary file of token ids per split, plus meta.json.

A prepared dataset folder holds `train.bin` and `val.bin` (token ids, back to back, with an end-of-text
token after every document), `meta.json` (counts and settings), the tokenizer files and `documents.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

META_FILE = "meta.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id: uint16 halves the files when it fits."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_path(data_dir: str | Path, split: str) -> Path:
    """Path of a split's token file, e.g. `<data_dir>/train.bin`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(data_dir) / f"{split}.bin"


def is_prepared(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds a complete prepared dataset."""
    return (Path(data_dir) / META_FILE).is_file() and all(split_path(data_dir, s).is_file() for s in SPLITS)


def read_meta(data_dir: str | Path) -> dict:
    """The dataset's meta.json as a dict."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise ValueError(f"{data_dir} is not a prepared dataset (no {META_FILE}); run `lmforge prepare` first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_meta(data_dir: str | Path, meta: dict) -> None:
    (Path(data_dir) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def open_tokens(data_dir: str | Path, split: str) -> np.ndarray:
    """The split's token ids as a read-only memory map (the file is paged in on demand, never loaded whole)."""
    path = split_path(data_dir, split)
    dtype = np.dtype(read_meta(data_dir)["dtype"])
    if path.stat().st_size == 0:
        # The OS cannot memory-map an empty file; an empty split (val_fraction 0) is still valid.
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenFileWriter:
    """Appends token ids to one split file and counts what it wrote."""

    def __init__(self, path: str | Path, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.tokens = 0
        self.documents = 0
        self._file = open(path, "wb")

    def append_document(self, ids: list[int], eot_id: int) -> None:
        """Write one document's ids followed by the end-of-text token."""
        array = np.array(ids + [eot_id], dtype=self.dtype)
        array.tofile(self._file)
        self.tokens += len(array)
        self.documents += 1

    def close(self) -> None:
        self._file.close()
