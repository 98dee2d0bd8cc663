"""Labelled texts for classification fine-tuning: loading, splitting, balancing, batching.

A language model becomes a classifier by reading a text and passing the hidden state of its
*last* token (the only one that has seen the whole text, attention being causal) to a small
classification head. So a batch holds the token ids, the index of each row's last real token,
and the label:

    x           (B, T) token ids, right-padded to the batch's longest text
    last_index  (B,)   where each text's last real token is: the head reads position last_index
    label       (B,)   class number, an index into the sorted list of class names

Files (`load_labelled`):

    CSV / TSV with a header   columns guessed by name (text|sentence|message|content, and
                              label|class|category|target) unless text_field/label_field say
    TSV without a header      two columns, e.g. SMSSpamCollection ("spam<TAB>text"); the label
                              column is the one with fewer distinct values
    JSON array / JSON Lines   objects; fields guessed the same way

Real datasets are often imbalanced (SMS spam: 13% spam). A model can then score 87% by always
answering "ham", which is why `stratified_split` keeps every class's share in both splits, and
`balance` (drop examples of the big classes) or `class_weights` (weigh the loss) counteract it.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lmforge.data.sft import ExampleBatches, held_out_count

TEXT_COLUMNS = ("text", "sentence", "message", "content")
LABEL_COLUMNS = ("label", "class", "category", "target")
JSON_SUFFIXES = {".json", ".jsonl"}


class LabelledTexts(NamedTuple):
    """Texts with their labels (as strings), and the sorted list of distinct labels (the classes)."""

    texts: list[str]
    labels: list[str]
    classes: list[str]

    def label_ids(self) -> list[int]:
        """Each label as its index in `classes`."""
        number = {name: i for i, name in enumerate(self.classes)}
        return [number[label] for label in self.labels]


# --- Loading -----------------------------------------------------------------------------------


def load_labelled(path: str | Path, text_field: str | None = None, label_field: str | None = None) -> LabelledTexts:
    """Read labelled texts from CSV/TSV (with or without a header) or JSON/JSONL; see the module docstring."""
    path = Path(path)
    content = path.read_text(encoding="utf-8")
    is_json = path.suffix.lower() in JSON_SUFFIXES or content.lstrip()[:1] in ("[", "{")
    reader = _json_pairs if is_json else _table_pairs
    return _collect(reader(content, path, text_field, label_field), path)


def _json_pairs(content: str, path: Path, text_field: str | None,
                label_field: str | None) -> list[tuple[object, object]]:
    if content.lstrip().startswith("["):
        records = json.loads(content)
    else:
        records = [json.loads(line) for line in content.splitlines() if line.strip()]
    if not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{path}: expected JSON objects with a text and a label field")
    keys = sorted({key for record in records for key in record})
    text_key, label_key = _choose_columns(keys, text_field, label_field, path)
    return [(record.get(text_key), record.get(label_key)) for record in records]


def _table_pairs(content: str, path: Path, text_field: str | None,
                 label_field: str | None) -> list[tuple[str, str]]:
    rows = _table_rows(content)
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    if _is_header(rows[0], text_field, label_field):
        text_column, label_column = (rows[0].index(name) for name in
                                     _choose_columns(rows[0], text_field, label_field, path))
        rows = rows[1:]
    else:
        text_column, label_column = _headerless_columns(rows, path)
    width = max(text_column, label_column) + 1
    for number, row in enumerate(rows, start=1):
        if len(row) < width:
            raise ValueError(f"{path}: data row {number} has {len(row)} columns, expected at least {width}: {row}")
    return [(row[text_column], row[label_column]) for row in rows]


def _table_rows(content: str) -> list[list[str]]:
    first_line = content.split("\n", 1)[0]
    if "\t" in first_line:
        # Tab-separated files (SMSSpamCollection among them) use no quoting: a quote is just text.
        reader = csv.reader(io.StringIO(content), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(content))
    return [row for row in reader if any(cell.strip() for cell in row)]


def _is_header(row: list[str], text_field: str | None, label_field: str | None) -> bool:
    known = {*TEXT_COLUMNS, *LABEL_COLUMNS, text_field, label_field}
    return any(cell.strip().lower() in known or cell in known for cell in row)


def _choose_columns(names: Sequence[str], text_field: str | None, label_field: str | None,
                    path: Path) -> tuple[str, str]:
    """The names of the text and the label column: as given, or guessed from the usual names."""
    return (_find_column(names, text_field, TEXT_COLUMNS, "text", path),
            _find_column(names, label_field, LABEL_COLUMNS, "label", path))


def _find_column(names: Sequence[str], given: str | None, usual: tuple[str, ...], what: str, path: Path) -> str:
    if given is not None and given in names:
        return given
    guessed = next((name for name in names if name.strip().lower() in usual), None)
    if given is not None or guessed is None:
        wanted = f"column {given!r}" if given is not None else f"{what} column"
        raise ValueError(f"{path}: no {wanted} among {list(names)}; "
                         f"name it with {what}_field=... (usual names: {', '.join(usual)})")
    return guessed


def _headerless_columns(rows: list[list[str]], path: Path) -> tuple[int, int]:
    """(text column, label column) of a two-column table without a header: labels repeat, texts hardly."""
    if any(len(row) != 2 for row in rows):
        raise ValueError(f"{path}: no header row found (expected column names such as text/label), and not every "
                         "row has exactly two columns (label and text), so the columns cannot be told apart")
    distinct = [len({row[column] for row in rows}) for column in (0, 1)]
    label_column = 1 if distinct[1] < distinct[0] else 0  # a tie keeps the SMSSpamCollection order: label first
    return 1 - label_column, label_column


def _collect(pairs: list[tuple[object, object]], path: Path) -> LabelledTexts:
    texts, labels = [], []
    for index, (text, label) in enumerate(pairs):
        if not isinstance(text, str) or label is None or str(label).strip() == "":
            raise ValueError(f"{path}: example {index} lacks a text or a label: {(text, label)!r}")
        texts.append(text)
        labels.append(str(label).strip())
    if not texts:
        raise ValueError(f"{path}: no labelled examples found")
    return LabelledTexts(texts, labels, sorted(set(labels)))


# --- Splitting and balancing -------------------------------------------------------------------


def stratified_split(n: int, labels: Sequence, val_fraction: float, seed: int = 1337) -> tuple[list[int], list[int]]:
    """(train indices, val indices) of examples 0..n-1, each class split in the same proportion.

    Each class gives round(count * val_fraction) of its examples to val: at least one when the
    fraction is > 0, and never all of them. Both lists are sorted.
    """
    if len(labels) != n:
        raise ValueError(f"expected {n} labels, got {len(labels)}")
    generator = np.random.default_rng(seed)
    train, val = [], []
    for members in _indices_by_class(range(n), labels).values():
        shuffled = generator.permutation(members).tolist()
        cut = held_out_count(len(shuffled), val_fraction)
        val += shuffled[:cut]
        train += shuffled[cut:]
    return sorted(train), sorted(val)


BALANCE_MODES = ("none", "downsample")


def balance(indices: Sequence[int], labels: Sequence, mode: str = "none", seed: int = 1337) -> list[int]:
    """The examples to train on: all of `indices` ("none"), or as many per class as the rarest has ("downsample")."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"unknown balance mode {mode!r}: use one of {list(BALANCE_MODES)}")
    if mode == "none":
        return list(indices)
    by_class = _indices_by_class(indices, labels)
    keep = min(len(members) for members in by_class.values())
    generator = np.random.default_rng(seed)
    return sorted(i for members in by_class.values() for i in generator.permutation(members)[:keep].tolist())


def _indices_by_class(indices, labels: Sequence) -> dict:
    """{label: [indices with that label]}, classes in sorted order so seeded draws do not depend on file order."""
    by_class: dict = {}
    for i in indices:
        by_class.setdefault(labels[i], []).append(i)
    return dict(sorted(by_class.items()))


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weight per class, inversely proportional to its frequency: total / (classes present * count).

    Normalised so the weights, averaged over the examples, are 1: the weighted loss keeps the scale
    of the plain one, while every class contributes as much as if all were equally common. A class
    with no example gets weight 0. Pass it as `F.cross_entropy(..., weight=...)`.
    """
    counts = Counter(labels)
    present = sum(1 for c in range(num_classes) if counts[c])
    return torch.tensor([len(labels) / (present * counts[c]) if counts[c] else 0.0 for c in range(num_classes)],
                        dtype=torch.float32)


# --- Batching ----------------------------------------------------------------------------------


class ClassifyBatches(ExampleBatches):
    """Batches of (x, last_index, label) for the training loop; the same contract as TokenBatches.

    Texts longer than `max_length` tokens keep their *start*: a message's opening usually says what
    it is about, and short-text datasets (SMS, reviews, titles) are rarely cut at all. Every epoch
    visits every text once in a (seed, epoch)-seeded order; eval_batches go through them in order.
    """

    def __init__(self, token_lists: Sequence[Sequence[int]], label_ids: Sequence[int], batch_size: int,
                 seed: int = 1337, pad_id: int = 0, max_length: int | None = None) -> None:
        if len(token_lists) != len(label_ids):
            raise ValueError(f"{len(token_lists)} texts but {len(label_ids)} labels")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        empty = next((i for i, tokens in enumerate(token_lists) if not tokens), None)
        if empty is not None:
            raise ValueError(f"text {empty} has no tokens: a classifier needs at least one token to read")
        self.token_lists = [list(tokens[:max_length]) for tokens in token_lists]
        self.label_ids = list(label_ids)
        self.pad_id = pad_id
        super().__init__(len(self.token_lists), batch_size, seed)

    def _collate(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.token_lists[i] for i in items]
        x = torch.full((len(rows), max(len(row) for row in rows)), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            x[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        last_index = torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)
        label = torch.tensor([self.label_ids[i] for i in items], dtype=torch.long)
        return x, last_index, label
