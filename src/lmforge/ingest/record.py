"""What every reader produces: Records of text with where they came from.

A reader turns one file into zero or more Records (one per document: a whole text file, a PDF, an
HTML page, a table row...). Expected reasons not to read a file (binary, empty, encrypted, a
missing optional dependency) are raised as SkipFile with a reason a person can act on; anything
else a reader raises is reported as a failure of that file. Neither ever ends an ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Record:
    text: str
    source: str                      # the file, e.g. "docs/report.pdf" or "bundle.zip::notes/a.txt"
    format: str                      # "text", "markdown", "code", "pdf", "image", "html", "csv", ...
    meta: dict = field(default_factory=dict)  # reader-specific: language, title, pages, row, table, ...


class SkipFile(Exception):
    """This file is deliberately not read; str(exc) says why (and how to fix it, where possible)."""


@dataclass
class ReaderOptions:
    """Choices that change what readers extract (set from the ingest config / CLI flags)."""

    text_fields: list[str] | None = None  # tabular/JSON fields to use; None = text/content/body, else all strings
    ocr: bool = True                      # OCR images and PDF pages without a text layer
    ocr_language: str = "eng"             # Tesseract language code(s), e.g. "eng+deu"
    pdf_min_page_chars: int = 20          # a PDF page with fewer extracted characters is treated as scanned
    # Limits on what one file may cost (see IngestConfig for why and the defaults); 0 = no limit.
    max_file_mb: float = 64               # text, markdown, code and HTML files: read this much
    max_line_chars: int = 1_000_000       # longer lines of any record's text are cut
    max_pdf_pages: int = 2000             # PDF pages read
    max_image_pixels: int = 100_000_000   # an image (or a rendered PDF page) larger than this is not decoded
    max_ocr_seconds: float = 600          # OCR time per file


def note_limit(problems: list[str] | None, message: str) -> None:
    """Record that a limit cut this file's text short (the message names the setting that did)."""
    if problems is not None:
        problems.append(message)
