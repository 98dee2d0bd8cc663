"""Image reader and OCR: rendered text comes back, every TIFF page is read, problems are explained."""

from pathlib import Path

import pytest
from PIL import Image

from lmforge.ingest.readers.image import read_image
from lmforge.ingest.readers.ocr import _tidy, tesseract_available
from lmforge.ingest.record import Record, ReaderOptions, SkipFile
from tests.ingest.pdf_helpers import text_image
from tests.testdata import SAMPLE_DOCS as SAMPLES

needs_tesseract = pytest.mark.skipif(not tesseract_available(), reason="tesseract is not installed")

LINES = ["Quarterly report for the bakery", "Bread sales rose by twelve percent"]


def read_one(path: Path, **options) -> Record:
    records = list(read_image(path, ReaderOptions(**options)))
    assert len(records) == 1
    return records[0]


def words(text: str) -> set[str]:
    return set(text.lower().split())


@needs_tesseract
@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_text_in_an_image_is_read(tmp_path, suffix):
    image = text_image(LINES)
    image.save(tmp_path / f"report.{suffix}")
    record = read_one(tmp_path / f"report.{suffix}")
    assert {"quarterly", "report", "bakery", "bread", "sales", "twelve", "percent"} <= words(record.text)
    assert "\f" not in record.text and record.text == record.text.strip()
    assert record.meta == {"frames": 1, "width": image.width, "height": image.height}
    assert record.format == "image"


@needs_tesseract
def test_dark_text_on_a_transparent_background_is_read(tmp_path):
    text_image(LINES, mode="RGBA").save(tmp_path / "logo.png")  # naively made grey, it is all black
    assert "bakery" in words(read_one(tmp_path / "logo.png").text)


@needs_tesseract
def test_every_page_of_a_multipage_tiff_is_read(tmp_path):
    first, second = text_image(["Page one mentions apples"]), text_image(["Page two mentions oranges"])
    first.save(tmp_path / "fax.tif", save_all=True, append_images=[second])
    record = read_one(tmp_path / "fax.tif")
    assert record.meta["frames"] == 2
    assert record.text.lower().index("apples") < record.text.lower().index("oranges")


@needs_tesseract
def test_image_without_text_is_skipped(tmp_path):
    Image.new("L", (400, 300), "white").save(tmp_path / "blank.png")
    with pytest.raises(SkipFile, match="no text found in image"):
        read_one(tmp_path / "blank.png")


@needs_tesseract
def test_missing_language_data_names_the_package(tmp_path):
    text_image(LINES).save(tmp_path / "report.png")
    with pytest.raises(SkipFile, match="apt-get install tesseract-ocr-xyz"):
        read_one(tmp_path / "report.png", ocr_language="xyz")


def test_ocr_off_skips_images(tmp_path):
    text_image(LINES).save(tmp_path / "report.png")
    with pytest.raises(SkipFile, match="OCR is off"):
        read_one(tmp_path / "report.png", ocr=False)


def test_missing_tesseract_names_the_fix(tmp_path, monkeypatch):
    pytesseract = pytest.importorskip("pytesseract")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    text_image(LINES).save(tmp_path / "report.png")
    assert not tesseract_available()
    with pytest.raises(SkipFile, match="apt-get install tesseract-ocr"):
        read_one(tmp_path / "report.png")


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_corrupt_image_fails_with_a_clear_message(tmp_path, cut):
    text_image(LINES).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: int(len(data) * cut)] or b"not an image at all")
    with pytest.raises(ValueError, match="corrupt"):
        read_one(tmp_path / "broken.png")


def test_ocr_noise_lines_are_dropped():
    raw = "Hello there  \n|\n~ — '\n\n\n\nSecond paragraph\n\f"
    assert _tidy(raw) == "Hello there\n\nSecond paragraph"


@needs_tesseract
def test_real_scan_phototest():
    path = SAMPLES / "ocr" / "phototest.png"
    record = read_one(path)
    assert record.text.startswith("This is a lot of 12 point text to test the\nocr code")
    assert " ".join(record.text.split()).count("The quick brown dog jumped over the lazy fox.") == 4
    assert record.meta == {"frames": 1, "width": 640, "height": 480}
