"""Optical character recognition: the text printed in a picture, read by Tesseract.

Tesseract is a separate program (not a Python package); pytesseract runs it on a temporary copy of
the image. Both the image reader and the PDF reader (for scanned pages) come here, so the fixes for
a missing program or missing language data are spelled out once.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..record import SkipFile

if TYPE_CHECKING:  # Pillow is optional: only needed for the type hint here
    from PIL.Image import Image

INSTALL_TESSERACT = "apt-get install tesseract-ocr (Debian/Ubuntu), brew install tesseract (macOS)"


def tesseract_available() -> bool:
    """True when pytesseract is installed and can run the tesseract program."""
    try:
        import pytesseract
    except ImportError:
        return False
    try:
        pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError:
        return False
    return True


class OcrTimeUp(Exception):
    """The file's OCR time (ingest.max_ocr_seconds) is used up."""


class OcrClock:
    """The OCR time one file may use, across its pages (`seconds`; 0 = no limit)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.used = 0.0

    def ocr(self, image: Image, language: str) -> str:
        """ocr_image within the time left; raises OcrTimeUp when none is left (Tesseract is stopped)."""
        left = self.seconds - self.used if self.seconds else 0
        if self.seconds and left <= 0:
            raise OcrTimeUp
        start = time.monotonic()
        try:
            return ocr_image(image, language, timeout=left)
        finally:
            self.used += time.monotonic() - start


def ocr_image(image: Image, language: str, timeout: float = 0) -> str:
    """The text Tesseract reads in `image` ("" if none), in language(s) like "eng" or "eng+deu".

    Tesseract is stopped after `timeout` seconds (0: no limit), raising OcrTimeUp.
    """
    try:
        import pytesseract
    except ImportError:
        raise SkipFile("OCR needs pytesseract: pip install 'lmforge[ingest]'") from None
    try:
        with _single_threaded():
            text = pytesseract.image_to_string(_grayscale_on_white(image), lang=language, timeout=timeout)
    except pytesseract.TesseractNotFoundError:
        raise SkipFile(f"OCR needs the Tesseract program: {INSTALL_TESSERACT}") from None
    except pytesseract.TesseractError as error:
        missing = re.search(r"Failed loading language '([^']+)'", str(error.message))
        if missing:
            lang = missing.group(1)
            raise SkipFile(f"Tesseract has no '{lang}' language data: apt-get install tesseract-ocr-{lang}") from None
        raise
    except RuntimeError as error:  # after TesseractError, which is a RuntimeError too
        if "timeout" in str(error):  # pytesseract's way of saying it killed Tesseract at the timeout
            raise OcrTimeUp from None
        raise
    return _tidy(text)


def _grayscale_on_white(image: Image) -> Image:
    """A grayscale copy; transparent pixels become white (converted naively they turn black, hiding dark text)."""
    from PIL import Image as PILImage

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, "white"), rgba)
    # convert() always makes a new image with no file format, so pytesseract hands Tesseract a
    # lossless PNG (given a JPEG-loaded image it would re-encode it as JPEG).
    return image.convert("L")


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run Tesseract with one thread unless the user chose otherwise.

    Its OpenMP threads spin-wait for each other and compete with parallel ingest workers: on a
    2-core machine one thread was never slower, and 2-4 threads were at times 5-15x slower. The
    variable is set only around the call: left set, it would also limit PyTorch's threads.
    """
    if "OMP_THREAD_LIMIT" in os.environ:
        yield
        return
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        yield
    finally:
        del os.environ["OMP_THREAD_LIMIT"]


def _tidy(text: str) -> str:
    """Drop Tesseract's form feed, trailing spaces and lines of pure noise (no letter or digit).

    Pictures, rules and specks come out as lines like "|", "~ —" or "' ."; a blank line still
    separates paragraphs.
    """
    lines = [line.rstrip() for line in text.replace("\f", "\n").splitlines()]
    kept = [line if any(c.isalnum() for c in line) else "" for line in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
