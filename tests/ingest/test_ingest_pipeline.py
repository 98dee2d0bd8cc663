"""The whole ingest: a folder of mixed real files -> documents.jsonl + ingest_report.json."""

import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from lmforge.ingest.config import IngestConfig
from lmforge.ingest.pipeline import ingest, prune_cache
from tests.testdata import SAMPLE_DOCS

ARTICLE = ("Tidal pools are shallow basins of seawater left behind when the ocean retreats at low tide. "
           "They shelter anemones, crabs and small fish that must survive heat, wind and changing salinity "
           "until the sea returns. ")
STORY = " ".join(f"Sentence number {i} tells of a lighthouse keeper who counted ships and stars." for i in range(40))


def text_pdf(path: Path, lines: list[str]) -> None:
    """A one-page PDF with a real text layer, written by matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 11))
    for i, line in enumerate(lines):
        fig.text(0.05, 0.95 - 0.03 * i, line, fontsize=11)
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        fig.savefig(path, format="pdf")


@pytest.fixture
def mixed_folder(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "article.txt").write_text(ARTICLE * 3)
    (src / "copy_of_article.txt").write_text(ARTICLE * 3)                    # exact duplicate
    (src / "story.md").write_text("# The keeper\n\n" + STORY)
    (src / "story_edit.md").write_text("# The keeper\n\n" + STORY.replace("stars", "gulls", 2))  # near duplicate
    (src / "tool.py").write_text("def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n" * 3)
    (src / "page.html").write_text(
        "<html><head><title>Reef guide</title><script>var tracking = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/shop'>Shop</a></nav>"
        f"<article><h1>Reef guide</h1><p>{ARTICLE.replace('Tidal pools', 'Coral reefs')}</p>"
        f"<p>{ARTICLE.replace('Tidal pools', 'Kelp forests')}</p></article>"
        "<footer>Copyright 2026 Reef Co. All rights reserved.</footer></body></html>")
    (src / "reviews.csv").write_text("id,text,stars\n1,\"A wonderful book about the sea and its many moods, "
                                     "worth reading twice over.\",5\n2,\"As an AI language model, I cannot "
                                     "have opinions. The plot drags in the middle but the ending is strong "
                                     "and memorable.\",3\n")
    (src / "chat.jsonl").write_text('{"text": "The harbour master logged every arrival by hand for forty years."}\n'
                                    '{"text": broken json\n'
                                    '{"text": "Fog horns sounded twice each minute whenever the visibility dropped."}\n')
    text_pdf(src / "report.pdf", ["Annual report of the marine survey.", "Seals were counted on twelve beaches",
                                  "and the colony grew by a fifth since the last survey."])
    (src / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\n")   # truncated
    (src / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (src / "empty.txt").write_text("")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inner/notes.txt", "Notes from the archive: the tide tables were corrected in spring "
                                      "after the storm moved the sandbar two hundred metres east.")
    (src / "bundle.zip").write_bytes(buf.getvalue())
    return src


def read_documents(out):
    return [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]


def test_mixed_folder_is_ingested_with_every_file_accounted_for(mixed_folder, tmp_path):
    out = tmp_path / "out"
    cfg = IngestConfig(workers=2, cache_dir=str(tmp_path / "cache"))
    report = ingest([mixed_folder], out, cfg, quiet=True)
    status = {f["source"].replace(str(mixed_folder) + "/", ""): (f["status"], f["reason"]) for f in report["files"]}
    assert status["broken.pdf"][0] == "failed"
    assert status["blob.bin"] == ("skipped", "binary file of no supported format")
    assert status["empty.txt"][0] == "skipped"
    for ok in ("article.txt", "story.md", "tool.py", "page.html", "reviews.csv", "chat.jsonl", "report.pdf",
               "bundle.zip::inner/notes.txt"):
        assert status[ok][0] == "ok", (ok, status[ok])
    chat = next(f for f in report["files"] if f["source"].endswith("chat.jsonl"))
    assert any("2" in p for p in chat["problems"])  # the malformed line is reported by number

    docs = read_documents(out)
    everything = "\n".join(d["text"] for d in docs)
    assert "Seals were counted on twelve beaches" in everything           # PDF text layer
    assert "Coral reefs are shallow basins" in everything                 # HTML main content
    assert "tracking" not in everything and "Shop" not in everything      # script and nav removed
    assert "As an AI language model" not in everything                    # slop filtered
    assert "the ending is strong" in everything                           # ...but the review kept
    assert "the sandbar two hundred metres east" in everything            # archive member
    assert "    return a + b" in everything                               # code indentation intact
    assert sum("Tidal pools are shallow" in d["text"] for d in docs) == 1  # exact duplicate collapsed
    assert sum("lighthouse keeper" in d["text"] for d in docs) == 1       # near duplicate collapsed
    summary = report["summary"]
    assert summary["cleaning"]["exact_duplicates"] >= 1 and summary["cleaning"]["near_duplicates"] >= 1
    assert summary["documents_kept"] == len(docs) and summary["failed"] == 1
    assert json.loads((out / "ingest_report.json").read_text())["summary"] == summary


def test_rerun_reads_unchanged_files_from_the_cache(mixed_folder, tmp_path):
    cfg = IngestConfig(workers=1, cache_dir=str(tmp_path / "cache"))
    first = ingest([mixed_folder], tmp_path / "a", cfg, quiet=True)
    (mixed_folder / "article.txt").write_text(ARTICLE * 2 + "A new closing line about herons.")
    second = ingest([mixed_folder], tmp_path / "b", cfg, quiet=True)
    cached = {f["source"].rsplit("/", 1)[-1]: f["cached"] for f in second["files"] if f["status"] == "ok"}
    assert cached["article.txt"] is False and cached["story.md"] is True and cached["report.pdf"] is True
    chat = next(f for f in second["files"] if f["source"].endswith("chat.jsonl"))
    assert chat["cached"] and chat["problems"]  # a cached file still reports its malformed line
    # On the first run only the exact copy of article.txt is served from the cache (same content, same key).
    assert [f["source"].rsplit("/", 1)[-1] for f in first["files"] if f["cached"]] == ["copy_of_article.txt"]
    assert "herons" in (tmp_path / "b" / "documents.jsonl").read_text()


def test_cache_entries_unused_for_a_month_are_pruned_and_used_ones_kept(mixed_folder, tmp_path):
    cache = tmp_path / "cache"
    cfg = IngestConfig(workers=1, cache_dir=str(cache))
    ingest([mixed_folder], tmp_path / "a", cfg, quiet=True)
    entries = sorted(cache.glob("*.jsonl"))
    month_ago = time.time() - 31 * 86400
    for path in entries:  # as if the first run had been a month ago
        os.utime(path, (month_ago, month_ago))
    stale = cache / f"{'ab' * 20}.jsonl"  # an entry of a file that no longer exists
    stale.write_text('{"text": "old"}\n')
    not_ours = cache / "notes.jsonl"  # a file lmforge did not write: never deleted
    not_ours.write_text("mine\n")
    for path in (stale, not_ours):
        os.utime(path, (month_ago, month_ago))
    second = ingest([mixed_folder], tmp_path / "b", cfg, quiet=True)
    assert not stale.exists() and not_ours.exists()
    os.utime(not_ours, (month_ago, month_ago))
    assert prune_cache(cache) == 0  # nothing of ours is stale now, and the other file is never touched
    assert all(path.exists() for path in entries)  # read again by this run: kept, and marked as used
    assert all(path.stat().st_mtime > month_ago + 86400 for path in entries)
    assert all(f["cached"] for f in second["files"] if f["status"] == "ok")


def test_nothing_kept_is_an_error_with_the_report_written(tmp_path):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.bin").write_bytes(b"\x00\xff" * 100)
    with pytest.raises(ValueError, match="no document was kept"):
        ingest([src], tmp_path / "out", IngestConfig(workers=1, cache_dir=str(tmp_path / "cache")), quiet=True)
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["files"][0]["status"] == "skipped"


def test_real_sample_documents(tmp_path):
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed")
    report = ingest([SAMPLE_DOCS], tmp_path / "out", IngestConfig(workers=2, cache_dir=str(tmp_path / "cache")),
                    quiet=True)
    formats = {f["format"] for f in report["files"] if f["status"] == "ok"}
    assert {"pdf", "image", "html", "csv", "sql"} <= formats, report["summary"]
    assert report["summary"]["documents_kept"] > 10
