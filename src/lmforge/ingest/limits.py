"""Small helpers that apply the per-file limits of IngestConfig to text (see config.py for why).

Each returns what it cut, so the caller can say so in the file's report; none reads more than
the limit allows, so a file's cost is bounded by the limit, not by the file.
"""

from __future__ import annotations

from pathlib import Path

MB = 1024 * 1024


def read_at_most(path: Path, max_mb: float) -> tuple[bytes, int]:
    """The file's first `max_mb` MB (all of it when max_mb is 0), ending at a line break if there is
    one in the last tenth (so no character or line is cut in half); and the file's size."""
    size = path.stat().st_size
    limit = int(max_mb * MB)
    with open(path, "rb") as f:
        data = f.read(limit) if limit else f.read()
    if limit and size > limit:
        line_end = data.rfind(b"\n", limit - limit // 10)
        data = data[:line_end + 1] if line_end >= 0 else data[:_utf8_boundary(data)]
    return data, size


def _utf8_boundary(data: bytes) -> int:
    """Where `data` can be cut without splitting a UTF-8 character (continuation bytes are 10xxxxxx)."""
    end = len(data)
    while end > max(0, len(data) - 4) and data[end - 1] & 0xC0 == 0x80:
        end -= 1
    if end > 0 and data[end - 1] >= 0xC0:  # a lead byte whose continuation was cut off
        end -= 1
    return end


def file_cut_note(kind: str, kept: int, size: int) -> str:
    return f"{kind}: read the first {_size(kept)} of {_size(size)} (ingest.max_file_mb)"


def _size(count: int) -> str:
    return f"{count / MB:,.1f} MB" if count >= MB // 10 else f"{count / 1024:,.0f} KB"


def cut_long_lines(text: str, max_chars: int) -> tuple[str, int]:
    """`text` with every line longer than `max_chars` cut to that length; and how many were cut."""
    if not max_chars or len(text) <= max_chars:
        return text, 0  # the common case: no line can be too long, and nothing is copied
    lines = text.split("\n")
    cut = sum(len(line) > max_chars for line in lines)
    if not cut:
        return text, 0
    return "\n".join(line[:max_chars] for line in lines), cut
