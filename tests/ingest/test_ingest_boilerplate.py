"""Boilerplate: lines repeated across a group's documents, and page-number lines."""

import pytest

from lmforge.ingest.boilerplate import BoilerplateFinder, line_key, remove_page_numbers
from lmforge.ingest.config import CleanConfig

HEADER = "ACME Corp Quarterly Report - Confidential"
TOPICS = ["apples", "bridges", "comets", "dolphins", "engines", "forests", "glaciers", "harbours",
          "islands", "jungles"]


def make_docs() -> list[str]:
    docs = []
    for i, topic in enumerate(TOPICS):
        body = f"This section is about {topic}.\nWe studied {topic} for {i + 2} weeks and wrote it down."
        shared = "\nA note that only two documents share." if i < 2 else ""
        docs.append(f"{HEADER}\n{body}{shared}\nPage {i + 1} of {len(TOPICS) + 3}")
    return docs


def finder_for(docs: list[str], group: str = "reports") -> BoilerplateFinder:
    finder = BoilerplateFinder(CleanConfig(boilerplate_min_docs=5, boilerplate_min_share=0.5))
    for doc in docs:
        finder.observe(group, doc)
    return finder


def test_shared_header_and_page_footer_removed_content_kept():
    docs = make_docs()
    finder = finder_for(docs)
    for doc, topic in zip(docs, TOPICS):
        text, removed = finder.remove("reports", doc)
        assert removed == 2
        assert HEADER not in text and "Page" not in text
        assert f"This section is about {topic}." in text
    text, removed = finder.remove("reports", docs[0])
    assert "A note that only two documents share." in text  # in 2 of 10 documents: not boilerplate


def test_groups_are_counted_separately():
    finder = finder_for(make_docs(), group="reports")
    assert finder.remove("letters", make_docs()[0]) == (make_docs()[0], 0)


def test_share_threshold_applies_in_big_groups():
    docs = make_docs() + [f"Unrelated page {i} about something else entirely." for i in range(20)]
    finder = finder_for(docs)  # the header is in 10 of 30 documents: below half
    assert finder.remove("reports", docs[0])[1] == 0


def test_line_repeated_inside_one_document_counts_once():
    finder = finder_for(["Repeated line here\n" * 10] + [f"Document number {i}" for i in range(9)])
    assert finder.remove("reports", "Repeated line here") == ("Repeated line here", 0)


def test_line_key_ignores_digits_case_spacing_and_skips_short_or_letterless_lines():
    assert line_key("Page 3 of 10") == line_key("  page 12   OF 40 ")
    assert line_key("Page 3 of 10") != line_key("Page 3 to 10")
    assert line_key("ok") is None
    assert line_key("|---|---|") is None


@pytest.mark.parametrize("line", ["12", "  - 12 -", "\u201412\u2014", "Page 12", "page 3 of 10", "Page 3/10", "3 / 10"])
def test_page_number_lines_removed(line):
    assert remove_page_numbers(f"before\n{line}\nafter") == ("before\nafter", 1)


@pytest.mark.parametrize("line", ["1999", "12 apples", "Chapter 12", "3.5", "Page twelve"])
def test_other_short_lines_kept(line):
    assert remove_page_numbers(f"before\n{line}\nafter") == (f"before\n{line}\nafter", 0)
