"""Which reader handles which format. Each reader: (path, ReaderOptions) -> Iterator[Record]."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..record import ReaderOptions, Record
from .html import read_html
from .image import read_image
from .pdf import read_pdf
from .sql import read_sql_dump, read_sqlite
from .tabular import read_csv, read_json, read_jsonl, read_parquet
from .text import read_code, read_text

Reader = Callable[[Path, ReaderOptions], Iterator[Record]]

READERS: dict[str, Reader] = {
    "text": read_text,
    "markdown": read_text,
    "code": read_code,
    "pdf": read_pdf,
    "image": read_image,
    "html": read_html,
    "csv": read_csv,
    "json": read_json,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "sql": read_sql_dump,
    "sqlite": read_sqlite,
}
