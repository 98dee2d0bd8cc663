"""PDF reader: text layers page by page, OCR for scanned pages, clear skips and failures."""

import sys
from pathlib import Path

import pytest
from pypdf import PdfWriter

from lmforge.ingest.readers.ocr import tesseract_available
from lmforge.ingest.readers.pdf import _clean, read_pdf
from lmforge.ingest.record import Record, ReaderOptions, SkipFile
from tests.ingest.pdf_helpers import text_image, write_pdf
from tests.testdata import SAMPLE_DOCS as SAMPLES

needs_tesseract = pytest.mark.skipif(not tesseract_available(), reason="tesseract is not installed")

PAGE_1 = ["The committee met on Tuesday to review the budget.", "Everyone agreed that the roof must be repaired."]
PAGE_2 = ["Second page: the repair starts in early April."]
SCANNED = ["Scanned letters arrive every Monday", "from the harbour office"]


def read_one(path: Path, **options) -> Record:
    records = list(read_pdf(path, ReaderOptions(**options)))
    assert len(records) == 1
    return records[0]


def test_text_layer_pages_come_out_in_order(tmp_path):
    record = read_one(write_pdf(tmp_path / "minutes.pdf", [PAGE_1, PAGE_2], title="Minutes"))
    assert record.text == "\n".join(PAGE_1) + "\n\n" + PAGE_2[0]
    assert "\r" not in record.text
    assert record.meta == {"pages": 2, "ocr_pages": [], "title": "Minutes"}
    assert record.format == "pdf" and record.source == str(tmp_path / "minutes.pdf")


@needs_tesseract
def test_scanned_page_is_read_by_ocr(tmp_path):
    record = read_one(write_pdf(tmp_path / "scan.pdf", [text_image(SCANNED)]))
    assert {"scanned", "letters", "monday", "harbour", "office"} <= set(record.text.lower().split())
    assert "\f" not in record.text and not record.text.endswith("\n")
    assert record.meta["ocr_pages"] == [1]


@needs_tesseract
def test_mixed_pdf_ocrs_only_the_page_without_text(tmp_path):
    record = read_one(write_pdf(tmp_path / "mixed.pdf", [PAGE_1, text_image(SCANNED), PAGE_2]))
    first, scanned, last = record.text.split("\n\n")
    assert first == "\n".join(PAGE_1) and last == PAGE_2[0]
    assert "harbour" in scanned.lower()
    assert record.meta["pages"] == 3 and record.meta["ocr_pages"] == [2]


def test_ocr_off_keeps_text_pages_and_notes_the_unread_ones(tmp_path):
    record = read_one(write_pdf(tmp_path / "mixed.pdf", [PAGE_1, text_image(SCANNED)]), ocr=False)
    assert record.text == "\n".join(PAGE_1)
    assert record.meta["ocr_pages"] == []
    assert record.meta["ocr_skipped_pages"] == [2] and record.meta["ocr_skipped_reason"] == "OCR is off"


def test_missing_tesseract_is_noted_not_fatal(tmp_path, monkeypatch):
    pytesseract = pytest.importorskip("pytesseract")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    record = read_one(write_pdf(tmp_path / "mixed.pdf", [text_image(SCANNED), PAGE_1, text_image(SCANNED)]))
    assert record.text == "\n".join(PAGE_1)
    assert record.meta["ocr_skipped_pages"] == [1, 3]
    assert "apt-get install tesseract-ocr" in record.meta["ocr_skipped_reason"]


def test_pdf_without_any_text_is_skipped_with_the_reason(tmp_path):
    with pytest.raises(SkipFile, match="no text layer.*OCR is off"):
        read_one(write_pdf(tmp_path / "scan.pdf", [text_image(SCANNED)]), ocr=False)


def test_encrypted_pdf_is_skipped(tmp_path):
    writer = PdfWriter(clone_from=write_pdf(tmp_path / "plain.pdf", [PAGE_1]))
    writer.encrypt("secret")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(SkipFile, match=r"encrypted PDF \(password protected\)"):
        read_one(tmp_path / "locked.pdf")


def test_truncated_pdf_fails_with_a_clear_message(tmp_path):
    data = write_pdf(tmp_path / "whole.pdf", [PAGE_1, PAGE_2]).read_bytes()
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated PDF"):
        read_one(tmp_path / "half.pdf")


def test_pypdf_fallback_reads_text_but_cannot_ocr(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # makes `import pypdfium2` fail
    record = read_one(write_pdf(tmp_path / "mixed.pdf", [PAGE_1, text_image(SCANNED)], title="Fallback"))
    assert record.text.split() == " ".join(PAGE_1).split()  # pypdf may place line breaks differently
    assert record.meta["title"] == "Fallback"
    assert record.meta["ocr_skipped_pages"] == [2] and "pypdfium2" in record.meta["ocr_skipped_reason"]


def test_soft_hyphens_and_ligatures_are_undone():
    assert _clean("adip\ufffe\r\niscing ele\ufffement \ufb01ne\r\n") == "adipiscing element fine"


@pytest.mark.parametrize("name, expected", [
    ("pdf/google-doc-document.pdf", "Beautiful is better than ugly.\nExplicit is better than implicit."),
    ("pdf/multicolumn.pdf", "Lorem ipsum dolor sit amet, consectetuer adipiscing elit."),
])
def test_real_born_digital_pdfs(name, expected):
    record = read_one(SAMPLES / name)
    assert expected in record.text
    assert "\ufffe" not in record.text and "\r" not in record.text


@needs_tesseract
def test_real_scanned_pdf():
    record = read_one(SAMPLES / "ocr/c02-22.pdf")
    assert "went tip-toeing along a path amongst" in record.text
    assert "the branches wouldn’t scrape our heads" in record.text
    assert record.meta == {"pages": 1, "ocr_pages": [1]}
