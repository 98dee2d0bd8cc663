"""HTML pages -> the main text of the page, without menus, banners, scripts and footers.

A web page is mostly not its article: navigation, cookie banners, sidebars, footers, inline
JavaScript and CSS easily outweigh the text a person came to read, and a model trained on them
learns to write menus. trafilatura is a library built for exactly this ("boilerplate removal");
when it is not installed, or finds nothing, a simpler BeautifulSoup pass drops the usual junk
elements by tag name and by id/class.
"""

from __future__ import annotations

import html as html_entities
import re
from collections.abc import Iterator
from pathlib import Path

from ..limits import file_cut_note, read_at_most
from ..record import ReaderOptions, Record, SkipFile, note_limit
from .text import BOMS, decode_bytes

INSTALL_HINT = "pip install 'lmforge[ingest]'"

# Where a page declares its encoding: <meta charset="x"> or <meta http-equiv=... content="...; charset=x">.
# Browsers look for it only near the top of the file, so we do too.
_DECLARED_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)
_CHARSET_SCAN_BYTES = 4096

# The title: the first <title> tag, then its closing tag at most MAX_TITLE_CHARS later. Two bounded
# searches rather than one "<title>(.*?)</title>": that pattern scans to the end of the page from
# every <title> without a closing tag, so a page of many of them took quadratic time.
_TITLE_OPEN = re.compile(r"<title\b[^<>]*>", re.IGNORECASE)
_TITLE_CLOSE = re.compile(r"</title\s*>", re.IGNORECASE)
MAX_TITLE_CHARS = 2000

# Documentation generators (Sphinx, MkDocs...) end headings with a "¶" permalink anchor.
_PERMALINK_MARK = re.compile(r"\s*¶$", re.MULTILINE)

# The BeautifulSoup fallback: elements that are never the article...
_JUNK_TAGS = ["script", "style", "noscript", "template", "title", "nav", "header", "footer",
              "aside", "form", "iframe", "svg"]
# ...elements whose id or class, or ARIA landmark role, says they are page furniture...
_JUNK_ID_OR_CLASS = re.compile(r"cookie|consent|banner|menu|sidebar|footer|breadcrumb", re.IGNORECASE)
_JUNK_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
# ...but never these containers, whatever their class says (e.g. <body class="sidebar-enabled">).
_NEVER_JUNK = {"html", "body", "main", "article"}
# Elements that start a new line when a browser renders them.
_BLOCK_TAGS = ["p", "div", "br", "li", "tr", "pre", "blockquote", "section", "article", "table",
               "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6"]


def read_html(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """Yield one Record: the page title as the first line, then the page's main text."""
    data, size = read_at_most(path, options.max_file_mb)
    if not data.strip():
        raise SkipFile("empty file")
    if len(data) < size:
        note_limit(problems, file_cut_note("html", len(data), size))
    page = decode_html(data)
    title = page_title(page)
    text, extractor = main_text(page)
    if not text:
        raise SkipFile("no readable text on the page")
    if title and not text.startswith(title):
        text = f"{title}\n{text}"
    meta = {"extractor": extractor}
    if title:
        meta["title"] = title
    yield Record(text=text, source=str(path), format="html", meta=meta)


def decode_html(data: bytes) -> str:
    """Bytes -> str: a byte-order mark wins, then the page's declared charset, then a guess."""
    declared = _DECLARED_CHARSET.search(data[:_CHARSET_SCAN_BYTES])
    if declared and not data.startswith(tuple(bom for bom, _ in BOMS)):
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass  # an unknown or wrong declaration is common on old pages: guess instead
    return decode_bytes(data)[0]


def page_title(page: str) -> str:
    """The text of <title>, entities decoded and whitespace collapsed ("" if there is none)."""
    opening = _TITLE_OPEN.search(page)
    if not opening:
        return ""
    closing = _TITLE_CLOSE.search(page, opening.end(), opening.end() + MAX_TITLE_CHARS)
    if not closing:
        return ""
    return " ".join(html_entities.unescape(page[opening.end():closing.start()]).split())


def main_text(page: str) -> tuple[str, str]:
    """The page's main text ("" if it has none) and the name of the extractor that produced it."""
    text = _text_with_trafilatura(page)
    extractor = "trafilatura"
    if not text:
        text = _text_with_beautifulsoup(page)
        extractor = "beautifulsoup"
    return _PERMALINK_MARK.sub("", text).strip(), extractor


def _text_with_trafilatura(page: str) -> str:
    try:
        import trafilatura
    except ImportError:
        return ""
    # favor_recall errs on the side of keeping text: on documentation pages the precision setting
    # drops short paragraphs and code examples. Reader comments are not the article.
    text = trafilatura.extract(page, include_comments=False, include_tables=True, favor_recall=True)
    return text or ""


def _text_with_beautifulsoup(page: str) -> str:
    try:
        from bs4 import BeautifulSoup
    except ImportError:
        raise SkipFile(f"reading HTML needs trafilatura or beautifulsoup4: {INSTALL_HINT}") from None
    soup = BeautifulSoup(page, "html.parser")
    for tag in soup.find_all(_JUNK_TAGS) + soup.find_all(_is_page_furniture):
        tag.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.append("\n")  # so that paragraphs do not run into each other in get_text()
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    return "\n".join(line for line in lines if line)


def _is_page_furniture(tag) -> bool:
    if tag.name in _NEVER_JUNK:
        return False
    if tag.get("role") in _JUNK_ROLES:
        return True
    names = [tag.get("id") or ""] + list(tag.get("class") or [])
    return bool(_JUNK_ID_OR_CLASS.search(" ".join(names)))
