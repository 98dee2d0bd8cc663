"""HTML reader: the article comes out, the page furniture around it does not."""

import sys
from pathlib import Path

import pytest

from lmforge.ingest.readers.html import decode_html, read_html
from lmforge.ingest.record import ReaderOptions, SkipFile
from tests.testdata import SAMPLE_DOCS

SAMPLE_HTML = SAMPLE_DOCS / "html"

ARTICLE = [
    "Tide pools form where the ocean retreats twice a day and leaves water trapped among the rocks.",
    "Sea anemones, hermit crabs and purple urchins survive in these pools by tolerating sudden "
    "changes in temperature and salinity.",
    "Visitors should step only on bare rock, because the mussel beds crack under a careless boot.",
]
JUNK = ["dataLayer", "color: red", "Navigation link", "Site header slogan", "We use cookies",
        "Related posts", "All rights reserved", "tracking pixel", "Subscribe to our newsletter"]

PAGE = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Tide Pools &amp; Their Residents</title>
<style>body {{ color: red; }}</style>
<script>function track() {{ window.dataLayer.push("pageview"); }}</script>
</head>
<body class="sidebar-enabled">
<header><a href="/">Home</a> Site header slogan</header>
<nav><ul><li><a href="/a">Navigation link alpha</a></li><li><a href="/b">Navigation link beta</a></li></ul></nav>
<div id="cookie-banner">We use cookies to improve your experience. Accept all cookies?</div>
<main><article>
<h1>Life between the tides</h1>
<p>{ARTICLE[0]}</p>
<p>{ARTICLE[1]}</p>
<p>{ARTICLE[2]}</p>
</article></main>
<aside class="sidebar">Related posts: ten best beaches</aside>
<form><input placeholder="email"> Subscribe to our newsletter</form>
<footer>Copyright 2024 Coastal Club. All rights reserved.</footer>
<script>document.write("tracking pixel");</script>
</body></html>
"""


@pytest.fixture(params=["trafilatura", "beautifulsoup"])
def extractor(request, monkeypatch):
    """Run a test with trafilatura, and again as if it were not installed (the fallback)."""
    if request.param == "trafilatura":
        pytest.importorskip("trafilatura")
    else:
        monkeypatch.setitem(sys.modules, "trafilatura", None)  # makes `import trafilatura` fail
    return request.param


def read_one(path: Path):
    records = list(read_html(path, ReaderOptions()))
    assert len(records) == 1
    return records[0]


def test_article_kept_and_page_furniture_dropped(tmp_path, extractor):
    page = tmp_path / "tides.html"
    page.write_text(PAGE, encoding="utf-8")
    record = read_one(page)
    assert record.meta["extractor"] == extractor
    assert record.meta["title"] == "Tide Pools & Their Residents"
    assert record.text.splitlines()[0] == "Tide Pools & Their Residents"
    assert "Life between the tides" in record.text
    for sentence in ARTICLE:
        assert sentence in record.text
    for junk in JUNK:
        assert junk not in record.text
    assert record.source == str(page) and record.format == "html"


def test_declared_charset_is_used(tmp_path):
    page = tmp_path / "latin.html"
    text = "<p>Le café de la gare sert un crème brûlée délicieux tous les matins à huit heures.</p>"
    page.write_bytes(f'<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
                     f"<title>Café</title></head><body>{text}</body></html>".encode("latin-1"))
    assert decode_html(page.read_bytes()).count("café") == 1
    record = read_one(page)
    assert record.meta["title"] == "Café"
    assert "crème brûlée délicieux" in record.text


def test_page_without_title_has_no_title_meta(tmp_path, extractor):
    page = tmp_path / "bare.html"
    page.write_text(f"<html><body><p>{ARTICLE[0]}</p><p>{ARTICLE[1]}</p></body></html>")
    record = read_one(page)
    assert "title" not in record.meta
    assert record.text.startswith("Tide pools form")


@pytest.mark.parametrize("content", ["", "  \n", "<html><body><script>var x = 1;</script></body></html>"])
def test_pages_without_text_are_skipped(tmp_path, content):
    page = tmp_path / "empty.html"
    page.write_text(content)
    with pytest.raises(SkipFile):
        list(read_html(page, ReaderOptions()))


def test_without_any_html_library_the_skip_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trafilatura", None)
    monkeypatch.setitem(sys.modules, "bs4", None)
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    with pytest.raises(SkipFile, match=r"pip install 'lmforge\[ingest\]'"):
        list(read_html(page, ReaderOptions()))


@pytest.mark.parametrize("name, expected", [
    ("python-faq-general.html", "Python is an interpreted, interactive, object-oriented programming language."),
    ("python-tutorial-introduction.html", "Comments in Python start with the hash character"),
])
def test_real_sphinx_pages_give_clean_text(name, expected, extractor):
    path = SAMPLE_HTML / name
    record = read_one(path)
    assert len(record.text) > 5000
    assert expected in record.text
    assert record.meta["title"].endswith("Python 3.11.2 documentation")
    for junk in ("<script", "function(", "¶", "Navigation", "Created using Sphinx"):
        assert junk not in record.text
