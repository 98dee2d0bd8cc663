"""Tables and lists of records (CSV/TSV, JSON, JSONL, Parquet) -> one Record per row.

Every format becomes a stream of rows (dicts); one rule then picks each row's text:
  1. the fields the user named (options.text_fields, e.g. --text-field=message.content), else
  2. the first of text/content/body/message/document/article/story the row has, else
  3. all its string fields as "name: value" lines, leaving out ids, numbers and empty values.
Nested objects are flattened to dotted names first, so {"message": {"content": "hi"}} has a
field "message.content". Large files are streamed row by row, except plain JSON (see read_json).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from ..record import ReaderOptions, Record, SkipFile
from .text import decode_bytes

log = logging.getLogger("lmforge.ingest")

PREFERRED_TEXT_FIELDS = ("text", "content", "body", "message", "document", "article", "story")
# How spreadsheets and data frames write "no value" in a cell.
MISSING_VALUES = {"", "na", "n/a", "nan", "null", "none"}
SNIFF_BYTES = 64 * 1024
JSON_CHUNK_CHARS = 1 << 20  # a JSON array is read this much at a time
_JSON_SPACE = re.compile(r"[ \t\r\n]*")  # the whitespace JSON allows between items
DELIMITERS = {".tsv": "\t", ".tab": "\t"}
# csv's default limit (128 KiB per field) is too small for whole documents kept in one cell.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
MAX_LISTED_PROBLEMS = 20
MAX_LISTED_FIELDS = 50
PARQUET_BATCH_ROWS = 1024
TOO_DEEP = "JSON nested too deeply to parse (Python's parser stops near 1,000 levels)"


def read_csv(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per row of a CSV or TSV file with a header line."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open_text(path) as file:
        suffix = path.suffix.lower()
        delimiter = DELIMITERS.get(suffix) or (_csv_delimiter(file) if suffix == ".csv" else _sniff_delimiter(file))
        rows = csv.DictReader(file, delimiter=delimiter)
        header = rows.fieldnames or []
        if options.text_fields and not _has_any_field(header, options.text_fields):
            raise _no_such_fields(options.text_fields, header)  # say so now, not after a 2 GB scan
        yield from _records(path, "csv", enumerate(rows, start=1), options, _Problems(path, problems))


def read_json(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per object of a JSON array, of the one list of objects an object holds, or the object.

    A top-level array (the usual shape of a dataset) is streamed item by item, so its size is not
    limited by memory; any other document is parsed whole.
    """
    report = _Problems(path, problems)
    with open_text(path) as file:
        try:
            if _starts_with(file, "["):
                items = enumerate(_array_items(file), start=1)
            else:
                items = enumerate(_json_objects(json.load(file)), start=1)
            yield from _records(path, "json", _only_objects(items, "item", report), options, report)
        except RecursionError:  # the parser recurses per level: Python stops it near 1,000
            raise ValueError(TOO_DEEP) from None


def read_jsonl(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per line of a JSON Lines file; a malformed line is reported, not fatal.

    meta["row"] is the line number, so a record can be traced back to its line.
    """
    report = _Problems(path, problems)
    with open_text(path) as file:
        yield from _records(path, "jsonl", _only_objects(_jsonl_values(file, report), "line", report),
                            options, report)


def read_parquet(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per row of a Parquet file, read a batch of rows at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SkipFile("reading Parquet needs pyarrow: pip install 'lmforge[parquet]'") from None
    rows = (row for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            for row in batch.to_pylist())
    yield from _records(path, "parquet", enumerate(rows, start=1), options, _Problems(path, problems))


# --- reading the formats -------------------------------------------------------------------------

def open_text(path: Path) -> TextIO:
    """Open a text file for streaming, in the encoding its first 64 KB show."""
    with path.open("rb") as file:
        sample = file.read(SNIFF_BYTES)
    # Cut at the last newline so a multi-byte character split by the sample does not spoil the guess.
    whole_lines = sample[: sample.rfind(b"\n") + 1] or sample
    encoding = decode_bytes(whole_lines)[1]
    # errors="replace": one bad byte deep in a 2 GB file should cost a character, not the file.
    # newline="" lets the csv module handle line breaks inside quoted cells.
    return path.open(encoding=encoding, errors="replace", newline="")


def _csv_delimiter(file: TextIO) -> str:
    """',' for a .csv file, unless its header line is split by ';' only (Excel in locales with a decimal comma).

    Only the header is read: cells of text often hold commas and semicolons, the header rarely does.
    """
    header = file.readline()
    file.seek(0)
    return ";" if ";" in header and "," not in header else ","


def _sniff_delimiter(file: TextIO) -> str:
    sample = file.read(SNIFF_BYTES)
    file.seek(0)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:  # the Sniffer gives up on single-column files
        return ","


def _starts_with(file: TextIO, char: str) -> bool:
    """Whether the file's first character after whitespace (and a byte order mark) is `char`; rewinds."""
    start = file.read(SNIFF_BYTES).lstrip("\ufeff \t\r\n")
    file.seek(0)
    return start[:1] == char


def _array_items(file: TextIO) -> Iterator[object]:
    """The items of the JSON array that `file` holds, decoded one at a time from a growing buffer."""
    decoder = json.JSONDecoder()
    buffer, at_end = file.read(JSON_CHUNK_CHARS), False
    position = buffer.index("[") + 1
    while True:
        position = _JSON_SPACE.match(buffer, position).end()
        if position < len(buffer) and buffer[position] == "]":
            return
        if position < len(buffer) and buffer[position] == ",":
            position += 1
            continue
        try:
            item, end = decoder.raw_decode(buffer, position)
            # A number cut by the end of the buffer still decodes: accept an item only when something follows.
            if end < len(buffer) or at_end:
                yield item
                position = end
                continue
        except json.JSONDecodeError:
            if at_end:
                raise
        more = file.read(max(JSON_CHUNK_CHARS, len(buffer)))  # doubling: a big item is re-parsed O(log n) times
        at_end = not more
        if at_end and position >= len(buffer):
            raise json.JSONDecodeError("the array is not closed", buffer, position)
        buffer = buffer[position:] + more
        position = 0


def _json_objects(data) -> list:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise SkipFile("the JSON file holds a single value, not objects")
    # {"version": 2, "data": [{...}, {...}]}: the records are the one list of objects inside.
    lists = [value for value in data.values()
             if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)]
    return lists[0] if len(lists) == 1 else [data]


def _jsonl_values(lines: Iterable[str], report: _Problems) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            report.add(f"line {number}: invalid JSON ({error.msg})")
        except RecursionError:
            report.add(f"line {number}: {TOO_DEEP}")


def _only_objects(values: Iterable[tuple[int, object]], unit: str, report: _Problems) -> Iterator[tuple[int, dict]]:
    """Pass the JSON objects on; report the other values (a bare string or number is not a record)."""
    for number, value in values:
        if isinstance(value, dict):
            yield number, value
        else:
            report.add(f"{unit} {number}: not a JSON object")


# --- rows to records -----------------------------------------------------------------------------

def _records(path: Path, fmt: str, rows: Iterable[tuple[int, dict]], options: ReaderOptions,
             report: _Problems) -> Iterator[Record]:
    picker = _TextPicker(options.text_fields)
    for number, row in rows:
        picked = picker.pick(flatten(row))
        if picked is None:
            continue
        text, fields = picked
        if text:
            yield Record(text=text, source=str(path), format=fmt, meta={"row": number, "fields": fields})
    picker.finish(report)
    report.finish()


def flatten(row: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class _TextPicker:
    """Chooses each row's text by the rule in the module docstring, and counts rows it cannot use."""

    def __init__(self, text_fields: list[str] | None):
        self.text_fields = text_fields
        self.rows_without_fields = 0
        self.rows_with_fields = 0
        self.seen_fields: set[str] = set()  # to name the available fields when none match

    def pick(self, row: dict) -> tuple[str, list[str]] | None:
        """(text, fields used), or None for a row that lacks every named text field."""
        by_lower_name = {str(name).lower(): name for name in row}
        if not self.text_fields:
            return _preferred_field(row, by_lower_name) or _all_string_fields(row)
        fields = [by_lower_name[name.lower()] for name in self.text_fields if name.lower() in by_lower_name]
        if not fields:
            self.rows_without_fields += 1
            if len(self.seen_fields) < MAX_LISTED_FIELDS:
                self.seen_fields.update(map(str, row))
            return None
        self.rows_with_fields += 1
        values = [_as_text(row[field]) for field in fields]
        return "\n\n".join(value for value in values if value), fields

    def finish(self, report: _Problems) -> None:
        if not self.rows_without_fields:
            return
        if not self.rows_with_fields:
            raise _no_such_fields(self.text_fields, self.seen_fields)
        wanted = ", ".join(self.text_fields)
        report.say(f"{self.rows_without_fields} row(s) without the text field(s) {wanted} skipped")


def _has_any_field(available: Iterable[str], text_fields: list[str]) -> bool:
    return bool({name.lower() for name in available} & {name.lower() for name in text_fields})


def _no_such_fields(text_fields: list[str], available: Iterable[str]) -> SkipFile:
    names = ", ".join(sorted(available)) or "none"
    return SkipFile(f"no row has the text field(s) {', '.join(text_fields)}; available fields: {names}")


def _preferred_field(row: dict, by_lower_name: dict) -> tuple[str, list[str]] | None:
    for candidate in PREFERRED_TEXT_FIELDS:
        name = by_lower_name.get(candidate)
        if name is not None and isinstance(row[name], str):
            return row[name].strip(), [name]
    return None


def _all_string_fields(row: dict) -> tuple[str, list[str]]:
    fields = [name for name, value in row.items()
              if isinstance(value, str) and not _is_id(str(name)) and _is_text_value(value)]
    return "\n".join(f"{name}: {row[name].strip()}" for name in fields), fields


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(filter(None, map(_as_text, value)))
    return str(value).strip()


def _is_id(name: str) -> bool:
    """id, uuid, user_id, user-id, userId, AlbumId: keys, not text."""
    last = name.rsplit(".", 1)[-1]
    lower = last.lower()
    camel_case_id = last.endswith(("Id", "ID")) and last[-3:-2].islower()  # albumId, userID
    return lower in {"id", "uuid", "guid"} or lower.endswith(("_id", "-id")) or camel_case_id


def _is_text_value(value: str) -> bool:
    """False for empty cells, missing-value markers and numbers (CSV cells are all strings)."""
    value = value.strip()
    if value.lower() in MISSING_VALUES:
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


class _Problems:
    """Collects a file's problems for the caller's list and the log, listing only the first few."""

    def __init__(self, path: Path, sink: list[str] | None):
        self.path = path
        self.sink = sink
        self.count = 0

    def add(self, message: str) -> None:
        """One line's or item's problem: a file broken on every line must not flood the report."""
        self.count += 1
        if self.count <= MAX_LISTED_PROBLEMS:
            self.say(message)

    def say(self, message: str) -> None:
        """A problem that is always listed."""
        log.warning("%s: %s", self.path, message)
        if self.sink is not None:
            self.sink.append(message)

    def finish(self) -> None:
        unlisted = self.count - MAX_LISTED_PROBLEMS
        if unlisted > 0:
            self.say(f"{unlisted} more problems like these were not listed")
