"""Boilerplate: lines repeated across many documents of one source, and PDF page numbers.

Headers, footers, copyright lines, cookie notices and navigation menus repeat in many documents
that came from the same place (one folder of a website dump, one archive of reports: the caller
names the group). A model trained on them learns to recite them, so they are removed in two passes:

1. ``BoilerplateFinder.observe`` sees every document of a group and counts, for each line, in how
   many documents it occurs (as an 8-byte hash, so memory grows with distinct lines, not text).
2. ``BoilerplateFinder.remove`` drops the lines that occur in enough documents of the group.

Lines are compared after replacing digits with '#', so "Page 3 of 10" and "Page 4 of 12" are
the same line. A page number alone on a line ("12", "- 12 -", "Page 12") is noise in a PDF even
when the PDF is the only document, so ``remove_page_numbers`` drops those without counting
(clean.clean_record applies it to PDF records).

Only prose should go through the finder: in source code, lines such as "import os" or
"def main():" repeat across files because they are the content.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

from .config import CleanConfig

# Lines shorter than this (after normalising) are never boilerplate: "Yes", "}" or "end" repeat
# across documents because they are common, not because they are templates.
MIN_LINE_CHARS = 4
# Above this many distinct lines in one group, lines seen in a single document are forgotten so
# memory stays bounded. A real boilerplate line recurs soon after and is counted again.
MAX_TRACKED_LINES = 2_000_000

_DIGITS = re.compile(r"\d+")
_SPACES = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")

PAGE_NUMBER_MAX_CHARS = 40
_PAGE_NUMBER_LINE = re.compile(
    r"""^\s*(?:
        page\s+\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?   # Page 12, Page 3 of 10, page 3/10
      | [-–—]?\s*\d{1,3}\s*[-–—]?                  # 12, - 12 -, —12—  (1-3 digits: a year stays)
      | \d{1,3}\s*/\s*\d{1,3}                      # 3 / 10
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def line_key(line: str) -> int | None:
    """An 8-byte hash identifying a line up to digits, case and spacing; None if it is too short.

    Lines without a letter are skipped too: separators like "* * *" or Markdown table rules
    "|---|---|" repeat everywhere but removing them would break the documents' structure.
    """
    key = _SPACES.sub(" ", _DIGITS.sub("#", line)).strip().casefold()
    if len(key) < MIN_LINE_CHARS or not _LETTER.search(key):
        return None
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class BoilerplateFinder:
    """Counts lines across the documents of each group, then removes the frequent ones."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.min_docs = cfg.boilerplate_min_docs    # a line must occur in at least this many documents ...
        self.min_share = cfg.boilerplate_min_share  # ... and in at least this share of the group's documents
        self._line_docs: dict[str, Counter[int]] = {}  # group -> line hash -> documents containing it
        self._group_docs: Counter[str] = Counter()     # group -> documents observed

    def observe(self, source_group: str, text: str) -> None:
        """Pass 1: count the lines of one document (a line repeated inside it counts once)."""
        keys = {key for key in map(line_key, text.split("\n")) if key is not None}
        counts = self._line_docs.setdefault(source_group, Counter())
        counts.update(keys)
        self._group_docs[source_group] += 1
        if len(counts) > MAX_TRACKED_LINES:
            self._line_docs[source_group] = Counter({k: n for k, n in counts.items() if n > 1})

    def remove(self, source_group: str, text: str) -> tuple[str, int]:
        """Pass 2: drop the document's boilerplate lines; returns (text, lines removed)."""
        counts = self._line_docs.get(source_group)
        if not counts:
            return text, 0
        needed = max(self.min_docs, math.ceil(self.min_share * self._group_docs[source_group]))
        kept = [line for line in text.split("\n") if counts.get(line_key(line), 0) < needed]
        return "\n".join(kept), text.count("\n") + 1 - len(kept)


def remove_page_numbers(text: str) -> tuple[str, int]:
    """Drop lines that are only a page number ("12", "- 12 -", "Page 3 of 10"); for PDF text."""
    kept = [line for line in text.split("\n") if not _is_page_number(line)]
    return "\n".join(kept), text.count("\n") + 1 - len(kept)


def _is_page_number(line: str) -> bool:
    # Only short lines are matched: the pattern's leading and trailing \s* make it quadratic on a
    # long run of spaces (each way to split the run is tried), and a page number is never long.
    stripped = line.strip()
    return len(stripped) <= PAGE_NUMBER_MAX_CHARS and bool(_PAGE_NUMBER_LINE.match(stripped))
