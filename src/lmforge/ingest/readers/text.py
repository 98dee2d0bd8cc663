"""Plain text and markdown in any encoding, and source code (kept verbatim, language recorded)."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from ..code_quality import GENERATED_MARKERS, HEADER_LINES
from ..detect import code_language
from ..limits import file_cut_note, read_at_most
from ..record import ReaderOptions, Record, SkipFile, note_limit

BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]

# Minified or generated code: one enormous line, or a header that says a tool wrote it (the markers
# are the code-quality filter's, which also looks at the other measures; this skip happens on reading).
MINIFIED_LINE_CHARS = 1000
MINIFIED_MEAN_LINE_CHARS = 250


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Text and the encoding used: a BOM wins, then UTF-8, then charset-normalizer's guess, then Latin-1."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace"), encoding
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    guess = _guess_legacy_encoding(data)
    if guess is not None:
        return data.decode(guess, errors="replace"), guess
    return data.decode("latin-1"), "latin-1"  # every byte is a Latin-1 character: never fails


# charset-normalizer ranks code pages by how "chaotic" the decoded text looks, and on short Western
# text several Latin code pages tie. Windows-1252 is by far the most common legacy encoding, so it
# wins unless another candidate looks clearly cleaner.
CP1252_CHAOS_MARGIN = 20.0


def _guess_legacy_encoding(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    matches = list(from_bytes(data))
    if not matches:
        return None
    best = min(matches, key=lambda m: m.percent_chaos)
    western = next((m for m in matches if m.encoding == "cp1252"), None)
    if western is not None and western.percent_chaos <= best.percent_chaos + CP1252_CHAOS_MARGIN:
        return "cp1252"
    return best.encoding


def read_text_file(path: Path, options: ReaderOptions, problems: list[str] | None = None,
                   kind: str = "text") -> tuple[str, str]:
    """The file's text and encoding, up to options.max_file_mb (a cut is noted in `problems`)."""
    data, size = read_at_most(path, options.max_file_mb)
    if not data.strip():
        raise SkipFile("empty file")
    if len(data) < size:
        note_limit(problems, file_cut_note(kind, len(data), size))
    return decode_bytes(data)


def read_text(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    text, encoding = read_text_file(path, options, problems)
    fmt = "markdown" if path.suffix.lower() in {".md", ".markdown", ".mdx"} else "text"
    yield Record(text, str(path), fmt, {"encoding": encoding})


def read_code(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    text, encoding = read_text_file(path, options, problems, kind="code")
    lines = text.splitlines() or [""]
    if max(map(len, lines)) > MINIFIED_LINE_CHARS and len(text) / len(lines) > MINIFIED_MEAN_LINE_CHARS:
        raise SkipFile("minified code (very long lines)")
    header = "\n".join(lines[:HEADER_LINES]).lower()
    if any(marker in header for marker in GENERATED_MARKERS):
        raise SkipFile("generated code (its header says a tool wrote it)")
    yield Record(text, str(path), "code", {"language": code_language(path), "encoding": encoding})
