"""Hostile input: every bad file fails or is cut alone, with its reason in the report, and quickly.

Quadratic scans are tested at sizes where the old code took minutes to hours, against bounds
(seconds) far above what the linear code needs, so the tests do not depend on the machine's speed.
"""

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lmforge.ingest import pipeline
from lmforge.ingest.archives import ArchiveLimits
from lmforge.ingest.boilerplate import remove_page_numbers
from lmforge.ingest.clean import _EMAIL, remove_slop
from lmforge.ingest.config import IngestConfig
from lmforge.ingest.pipeline import ingest, read_item
from lmforge.ingest.readers.html import page_title
from lmforge.ingest.readers.sql import read_sql_dump
from lmforge.ingest.readers.tabular import read_json, read_jsonl
from lmforge.ingest.record import ReaderOptions
from lmforge.ingest.walk import SkippedItem, WorkItem, walk
from tests.ingest.hostile_files import blank_pdf, png_header, tar_bytes, zip_bytes
from tests.ingest.misbehaving import read_or_misbehave

TEXT = "The lighthouse keeper counted the ships that passed the point each night and wrote them down. "
KEPT = "Seals rested on the sandbar while the tide turned and the fishing boats came home at dusk. "


def run(src: Path, tmp_path: Path, **settings) -> dict:
    """Ingest `src` with `settings`; returns {source relative to src: report entry}."""
    cfg = IngestConfig(workers=2, cache_dir=str(tmp_path / "cache"), **settings)
    report = ingest([src], tmp_path / "out", cfg, quiet=True)
    return {f["source"].replace(f"{src}/", ""): f for f in report["files"]}


def documents(tmp_path: Path) -> str:
    return (tmp_path / "out" / "documents.jsonl").read_text()


def timed(function, *args):
    start = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - start


# ---- quadratic scans ------------------------------------------------------------------------------
def test_many_unclosed_title_tags_are_scanned_once():
    page = "<html><head>" + "<title>" * 150_000 + "</head></html>"  # minutes with <title>(.*?)</title>
    title, seconds = timed(page_title, page)
    assert title == "" and seconds < 2
    assert page_title("<html><TITLE lang=en>Tides &amp; reefs\n</title ><title>second</title>") == "Tides & reefs"


def test_an_sql_quote_that_never_closes_costs_linear_time(tmp_path):
    dump = tmp_path / "dump.sql"
    lines = "".join(f"line {i} of a value that never ends\n" for i in range(30_000))  # hours before
    dump.write_text("INSERT INTO notes VALUES (1, 'this quote is never closed\n" + lines)
    start = time.monotonic()
    with pytest.raises(ValueError, match="ends inside a quoted string"):
        list(read_sql_dump(dump, ReaderOptions()))
    assert time.monotonic() - start < 20


def test_an_sql_string_over_many_lines_still_reads_whole(tmp_path):
    dump = tmp_path / "dump.sql"
    body = "".join(f"paragraph {i} of a long letter\n" for i in range(1000))
    dump.write_text(f"INSERT INTO letters VALUES (1, '{body}');\nINSERT INTO letters VALUES (2, 'short note here');\n")
    rows = [r.text for r in read_sql_dump(dump, ReaderOptions())]
    assert rows == [body, "short note here"]


@pytest.mark.parametrize("content", ["[" * 200_000 + "]" * 200_000, '{"a": ' * 200_000 + "1" + "}" * 200_000])
def test_json_nested_200000_deep_is_reported_not_a_crash(tmp_path, content):
    path = tmp_path / "deep.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="nested too deeply"):
        list(read_json(path, ReaderOptions()))
    lines = tmp_path / "deep.jsonl"
    lines.write_text(json.dumps({"text": TEXT}) + "\n" + content + "\n")
    problems = []
    assert [r.text for r in read_jsonl(lines, ReaderOptions(), problems)] == [TEXT.strip()]
    assert any("line 2" in p and "nested too deeply" in p for p in problems)


def test_cleaning_scans_are_linear_on_long_lines():
    _, seconds = timed(remove_slop, "I hope this helps! " * 50_000)
    assert seconds < 5
    _, seconds = timed(_EMAIL.search, "a." * 200_000)
    assert seconds < 5
    _, seconds = timed(remove_page_numbers, " " * 200_000 + "x")
    assert seconds < 5
    assert remove_slop("Fine. As an AI language model, I agree. Next one! I hope this helps!")[0] == "Fine. Next one!"


# ---- readers that hang or die ---------------------------------------------------------------------
@pytest.fixture
def three_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(TEXT)
    (src / "z.txt").write_text(KEPT)
    return src


def test_a_killed_reader_fails_its_file_and_the_ingest_goes_on(three_files, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "read_item", read_or_misbehave)
    (three_files / "die.txt").write_text(TEXT + " and then the reader died")
    files = run(three_files, tmp_path)
    assert files["die.txt"]["status"] == "failed" and "SIGKILL" in files["die.txt"]["reason"]
    assert "ingest.worker_memory_mb" in files["die.txt"]["reason"]
    assert files["a.txt"]["status"] == files["z.txt"]["status"] == "ok"
    assert list(files) == ["a.txt", "die.txt", "z.txt"]  # the walk's order, whatever happened
    assert "lighthouse keeper" in documents(tmp_path) and "Seals rested" in documents(tmp_path)


def test_a_hung_reader_is_stopped_at_the_time_limit(three_files, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "read_item", read_or_misbehave)
    (three_files / "hang.txt").write_text(TEXT)
    start = time.monotonic()
    files = run(three_files, tmp_path, file_timeout_s=2)
    assert time.monotonic() - start < 120
    assert files["hang.txt"]["status"] == "failed" and "ingest.file_timeout_s" in files["hang.txt"]["reason"]
    assert files["z.txt"]["status"] == "ok"


def test_running_out_of_memory_in_a_reader_names_the_setting(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text(TEXT)

    def out_of_memory(*args):
        raise MemoryError

    monkeypatch.setitem(pipeline.READERS, "text", out_of_memory)
    (tmp_path / "cache").mkdir()
    result = read_item(WorkItem(path, "big.txt", "", "text"), ReaderOptions(), tmp_path / "cache")
    assert result.status == "failed" and "ingest.worker_memory_mb" in result.reason


# ---- the walked tree ------------------------------------------------------------------------------
def walk_with_timeout(src: Path, scratch: Path, limits: ArchiveLimits | None = None) -> list:
    """walk() in a thread: if it ever opened a FIFO it would block forever, failing the test instead."""
    found = []
    thread = threading.Thread(target=lambda: found.extend(walk([src], scratch, limits)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the walk blocked (opened a FIFO?)"
    return found


def test_fifos_in_the_tree_are_reported_and_never_opened(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(TEXT)
    os.mkfifo(src / "pipe.txt")
    items = walk_with_timeout(src, tmp_path)
    assert [type(i) for i in items] == [WorkItem, SkippedItem]
    assert "named pipe" in items[1].reason and items[1].format == "special"


def test_symlinks_out_of_the_tree_are_not_followed(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("a secret that must not be ingested")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(TEXT)
    (src / "link.txt").symlink_to(outside)
    assert [i.source for i in walk_with_timeout(src, tmp_path)] == [str(src / "a.txt")]


# ---- archives -------------------------------------------------------------------------------------
def test_a_zip_bomb_is_stopped_by_the_compression_ratio(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.zip").write_bytes(zip_bytes({"a.txt": KEPT.encode(), "zeros.txt": bytes(30 * 1024**2)}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    items = walk_with_timeout(src, scratch, ArchiveLimits(max_ratio=10))
    (bomb,) = [i for i in items if isinstance(i, SkippedItem)]
    assert bomb.source.endswith("bomb.zip") and "ingest.max_archive_ratio" in bomb.reason
    kept = [i for i in items if isinstance(i, WorkItem)]
    assert [i.source.split("::")[1] for i in kept] == ["a.txt"]  # the member before it; no half member
    assert sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()) <= 10 * 1024**2 + 1024


def test_one_byte_and_member_budget_spans_nested_archives(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    inner = tar_bytes({"b.txt": os.urandom(600_000), "c.txt": os.urandom(600_000)})
    (src / "outer.zip").write_bytes(zip_bytes({"a.txt": os.urandom(600_000), "inner.tar.gz": inner}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # 2.5 MB in all: the outer archive unpacks 1.8 MB, so the inner one runs out half-way.
    items = walk_with_timeout(src, scratch, ArchiveLimits(max_bytes=int(2.5 * 1024**2)))
    skipped = [i for i in items if isinstance(i, SkippedItem)]
    assert [i.source.rsplit("/", 1)[1] for i in skipped] == ["outer.zip::inner.tar.gz"]
    assert "ingest.max_archive_mb" in skipped[0].reason and "nested archives counted together" in skipped[0].reason
    items = walk_with_timeout(src, scratch, ArchiveLimits(max_members=3))
    skipped = [i for i in items if isinstance(i, SkippedItem)]
    assert "ingest.max_archive_members" in skipped[0].reason


def test_archives_nested_8_deep_stop_at_the_depth_limit(tmp_path):
    data, name = zip_bytes({"level8.txt": b"the bottom"}), "level8.zip"
    for level in range(7, 0, -1):
        members = {f"level{level}.txt": f"{KEPT} level {level}".encode(), name: data}
        data = zip_bytes(members) if level % 2 else tar_bytes(members)
        name = f"level{level}." + ("zip" if level % 2 else "tar.gz")
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(data)
    files = run(src, tmp_path)
    ok = sorted(source.rsplit("::", 1)[1] for source, f in files.items() if f["status"] == "ok")
    assert ok == ["level1.txt", "level2.txt", "level3.txt"]
    (deep,) = [f for f in files.values() if f["status"] != "ok"]
    assert deep["source"].endswith("level3.zip::level4.tar.gz") and "ingest.max_archive_depth (3)" in deep["reason"]


def evil_tar(path: Path) -> None:
    with tarfile.open(path, "w") as archive:
        def add(name, kind=tarfile.REGTYPE, data=b"", **fields):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("ok.txt", data=KEPT.encode())
        add("dev/zero", tarfile.CHRTYPE, devmajor=1, devminor=5)
        add("dev/pipe", tarfile.FIFOTYPE)
        add("passwd", tarfile.SYMTYPE, linkname="../../../etc/passwd")
        add("inside", tarfile.SYMTYPE, linkname="ok.txt")
        add("shadow", tarfile.LNKTYPE, linkname="/etc/shadow")
        add("../escaped.txt", data=b"written outside the folder")
        add("/tmp/absolute.txt", data=b"written anywhere")
        add("last.txt", data=TEXT.encode())


def test_tar_with_devices_links_out_and_escaping_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    evil_tar(src / "evil.tar")
    files = run(src, tmp_path)
    reasons = {source.split("::")[1]: f["reason"] for source, f in files.items() if f["status"] != "ok"}
    assert "a device" in reasons["dev/zero"] and "a FIFO" in reasons["dev/pipe"]
    assert "pointing outside" in reasons["passwd"] and "pointing outside" in reasons["shadow"]
    assert "pointing inside" in reasons["inside"]
    assert "outside the archive" in reasons["../escaped.txt"] and "outside the archive" in reasons["/tmp/absolute.txt"]
    assert {source for source, f in files.items() if f["status"] == "ok"} == {"evil.tar::ok.txt", "evil.tar::last.txt"}
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()


@pytest.mark.parametrize("name, data", [
    ("truncated.zip", zip_bytes({"a.txt": TEXT.encode() * 50, "b.txt": KEPT.encode() * 50})[:300]),
    ("garbage.zip", b"PK\x03\x04" + os.urandom(2000)),
    ("truncated.tar.gz", tar_bytes({"a.txt": os.urandom(50_000), "b.txt": TEXT.encode()})[:20_000]),
    ("garbage.tar.xz", os.urandom(3000)),
])
def test_corrupt_archives_are_reported_and_the_ingest_goes_on(tmp_path, name, data):
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(data)
    (src / "z.txt").write_text(KEPT)
    files = run(src, tmp_path)
    assert files[name]["status"] == "skipped" and "unreadable archive" in files[name]["reason"]
    assert files["z.txt"]["status"] == "ok"


# ---- PDFs, images, long lines ---------------------------------------------------------------------
def test_an_image_header_claiming_60000_squared_pixels_is_not_decoded(tmp_path):
    pytest.importorskip("PIL")
    src = tmp_path / "src"
    src.mkdir()
    (src / "huge.png").write_bytes(png_header(60_000, 60_000))
    (src / "z.txt").write_text(KEPT)
    files = run(src, tmp_path)
    assert files["huge.png"]["status"] == "skipped"
    assert "60,000 x 60,000" in files["huge.png"]["reason"] and "ingest.max_image_pixels" in files["huge.png"]["reason"]


def test_a_many_page_pdf_without_text_is_read_up_to_the_page_limit_and_never_ocrd(tmp_path):
    pytest.importorskip("pypdf")
    pytest.importorskip("pypdfium2")
    src = tmp_path / "src"
    src.mkdir()
    blank_pdf(src / "blank.pdf", 300)
    (src / "z.txt").write_text(KEPT)
    start = time.monotonic()
    files = run(src, tmp_path, max_pdf_pages=100)
    assert time.monotonic() - start < 60  # blank pages are not OCR'd (300 OCR runs take minutes)
    assert files["blank.pdf"]["status"] == "skipped"
    assert "read 100 of 300 pages (ingest.max_pdf_pages)" in files["blank.pdf"]["reason"]


def test_a_huge_pdf_page_is_rendered_within_the_pixel_limit(tmp_path):
    pytest.importorskip("pypdf")
    pytest.importorskip("pypdfium2")
    from lmforge.ingest.readers.pdf import RENDER_SCALE, _PdfiumDocument

    blank_pdf(tmp_path / "poster.pdf", 1, size=(14_400, 14_400))  # 200 x 200 inches: 1.9 gigapixels at 216 dpi
    document = _PdfiumDocument(tmp_path / "poster.pdf")
    try:
        image, scale = document.render_page(0, max_pixels=4_000_000)
    finally:
        document.close()
    assert scale < RENDER_SCALE and image.width * image.height <= 4_000_000


def test_ocr_time_per_file_is_capped(tmp_path):
    pytest.importorskip("pypdfium2")
    from lmforge.ingest.readers.ocr import tesseract_available
    from tests.ingest.pdf_helpers import text_image, write_pdf

    if not tesseract_available():
        pytest.skip("tesseract is not installed")
    src = tmp_path / "src"
    src.mkdir()
    scan = text_image(["Scanned pages take a second or more each to read by OCR."] * 12)
    write_pdf(src / "scan.pdf", [scan, scan, scan])
    (src / "z.txt").write_text(KEPT)
    files = run(src, tmp_path, max_ocr_seconds=0.2)
    reason = files["scan.pdf"]["reason"] + " ".join(files["scan.pdf"]["problems"])
    assert "OCR stopped after 0.2 s (ingest.max_ocr_seconds)" in reason


def test_long_lines_and_big_files_are_cut_and_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "one_line.txt").write_text("word " * 20_000)  # 100,000 characters, no line break
    (src / "big.md").write_text((TEXT + "\n") * 1000)   # about 95 KB
    files = run(src, tmp_path, max_line_chars=5_000, max_file_mb=0.01)
    one_line = files["one_line.txt"]
    assert one_line["status"] == "ok" and one_line["chars_kept"] <= 5_000
    assert any("ingest.max_line_chars" in p for p in one_line["problems"])
    big = files["big.md"]
    assert big["status"] == "ok" and big["chars_kept"] <= 0.01 * 1024**2
    assert any("ingest.max_file_mb" in p for p in big["problems"])
