"""PDF files: the text layer page by page, and OCR for scanned pages that have none.

A "born-digital" PDF (exported from a word processor or LaTeX) stores its text, which we extract
directly. A scanned PDF stores only pictures of pages: those pages are rendered to an image and
read by Tesseract (see ocr.py). pypdfium2 (the PDF engine of Chrome) does both, fast. Without it
we fall back to pypdf, which reads text layers but cannot render, so scanned pages stay unread.

A PDF costs time per page, and OCR costs seconds per page, so both are capped per file
(max_pdf_pages, max_ocr_seconds); a page with nothing on it is never OCR'd, and a page so large
that its rendering would exceed max_image_pixels is rendered smaller. Each cut is noted.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..record import Record, ReaderOptions, SkipFile, note_limit
from .ocr import OcrClock, OcrTimeUp

if TYPE_CHECKING:
    from PIL.Image import Image

# Pages render at 72 dpi * RENDER_SCALE. 216 dpi read better than 144 dpi on the sample scans
# (fewer misread words) for ~30% more OCR time; 288 dpi was no better.
RENDER_SCALE = 3

# pdfium marks a word hyphenated across a line break with U+FFFE (joining the halves); and some
# PDFs store ligatures such as "ﬁ" as one character. Both would split or garble words.
_SOFT_HYPHEN = "\ufffe"
_LIGATURES = str.maketrans({chr(c): unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)})


def read_pdf(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per PDF: its pages' text joined by blank lines, OCR'd where there is no text layer."""
    document = _open(path)
    notes: list[str] = []  # the limits that cut this file short
    try:
        pages = min(document.page_count, options.max_pdf_pages or document.page_count)
        if pages < document.page_count:
            notes.append(f"pdf: read {pages:,} of {document.page_count:,} pages (ingest.max_pdf_pages)")
        texts = [_clean(document.page_text(index)) for index in range(pages)]
        scanned = [index for index, text in enumerate(texts)
                   if len(text) < options.pdf_min_page_chars and not document.is_empty(index)]
        ocr_texts, no_ocr_reason = _ocr_pages(document, scanned, options, notes)
    finally:
        document.close()
    for note in notes:
        note_limit(problems, note)
    for index, ocr_text in ocr_texts.items():
        texts[index] = ocr_text or texts[index]  # a blank scan keeps what little text layer it had

    text = "\n\n".join(t for t in texts if t)
    if not text:
        why = f"no text layer (a scan?) and {no_ocr_reason}" if no_ocr_reason else "no text in PDF, even by OCR"
        raise SkipFile("; ".join([why, *notes]))
    meta = {"pages": document.page_count, "ocr_pages": [index + 1 for index in ocr_texts]}
    if document.title:
        meta["title"] = document.title
    unread = [index + 1 for index in scanned if index not in ocr_texts]
    if unread:
        meta.update(ocr_skipped_pages=unread, ocr_skipped_reason=no_ocr_reason)
    yield Record(text=text, source=str(path), format="pdf", meta=meta)


def _ocr_pages(
    document: _PdfiumDocument | _PypdfDocument, indexes: list[int], options: ReaderOptions, notes: list[str]
) -> tuple[dict[int, str], str | None]:
    """The OCR text of the pages at `indexes`, and why the rest were not OCR'd (None: all were)."""
    if not indexes:
        return {}, None
    if not options.ocr:
        return {}, "OCR is off"
    if not document.can_render:
        return {}, "rendering scanned pages needs pypdfium2: pip install 'lmforge[ingest]'"
    texts = {}
    clock = OcrClock(options.max_ocr_seconds)
    shrunk = []
    for index in indexes:
        image, scale = document.render_page(index, options.max_image_pixels)
        if scale < RENDER_SCALE:
            shrunk.append(index + 1)
        try:
            texts[index] = clock.ocr(image, options.ocr_language)
        except SkipFile as skip:  # e.g. no Tesseract: the remaining pages would fail the same way
            return texts, str(skip)
        except OcrTimeUp:
            reason = f"OCR stopped after {options.max_ocr_seconds:g} s (ingest.max_ocr_seconds)"
            notes.append(f"pdf: {reason}: {len(indexes) - len(texts):,} of {len(indexes):,} scanned pages left unread")
            return texts, reason
    if shrunk:
        notes.append(f"pdf: {len(shrunk):,} page(s) rendered at lower resolution for OCR, too large at "
                     f"{72 * RENDER_SCALE} dpi (ingest.max_image_pixels): pages {_page_list(shrunk)}")
    return texts, None


def _page_list(pages: list[int], shown: int = 10) -> str:
    listed = ", ".join(map(str, pages[:shown]))
    return listed + (f" and {len(pages) - shown:,} more" if len(pages) > shown else "")


def _clean(text: str) -> str:
    """Unix line ends, hyphenated words joined, ligatures split into letters, no outer whitespace."""
    text = text.replace("\r\n", "\n").replace(_SOFT_HYPHEN + "\n", "").replace(_SOFT_HYPHEN, "")
    return text.translate(_LIGATURES).strip()


def _open(path: Path) -> _PdfiumDocument | _PypdfDocument:
    """The PDF opened with pypdfium2, or with pypdf where pypdfium2 is not installed."""
    try:
        return _PdfiumDocument(path)
    except ImportError:
        pass
    try:
        return _PypdfDocument(path)
    except ImportError:
        raise SkipFile("reading PDFs needs pypdfium2 or pypdf: pip install 'lmforge[ingest]'") from None


class _PdfiumDocument:
    """A PDF opened with pypdfium2. Its objects hold native memory, so each is closed after use."""

    can_render = True

    def __init__(self, path: Path) -> None:
        import pypdfium2

        try:
            self._pdf = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError as error:
            if error.err_code == pypdfium2.raw.FPDF_ERR_PASSWORD:
                raise SkipFile("encrypted PDF (password protected)") from None
            raise ValueError(f"corrupt or truncated PDF: {error}") from None
        self.page_count = len(self._pdf)
        self.title = self._pdf.get_metadata_dict(skip_empty=True).get("Title")

    def page_text(self, index: int) -> str:
        page = self._pdf[index]
        textpage = page.get_textpage()
        try:
            return textpage.get_text_range()
        finally:
            textpage.close()
            page.close()

    def is_empty(self, index: int) -> bool:
        """A page with no objects at all (no text, image or drawing): nothing to OCR."""
        page = self._pdf[index]
        try:
            return next(page.get_objects(max_depth=1), None) is None
        finally:
            page.close()

    def render_page(self, index: int, max_pixels: int) -> tuple[Image, float]:
        """The page as a grayscale image, and the scale it was rendered at: RENDER_SCALE, or less
        where that would make more than `max_pixels` (0: no limit)."""
        page = self._pdf[index]
        width, height = page.get_size()  # in points, 1/72 inch
        scale = RENDER_SCALE
        if max_pixels and width * height * scale * scale > max_pixels:
            scale = math.sqrt(max_pixels / (width * height))
        bitmap = page.render(scale=scale, grayscale=True)
        try:
            return bitmap.to_pil().copy(), scale  # a copy: the PIL image would share the bitmap's memory
        finally:
            bitmap.close()
            page.close()

    def close(self) -> None:
        self._pdf.close()


class _PypdfDocument:
    """A PDF opened with pypdf (pure Python): text layers only."""

    can_render = False

    def __init__(self, path: Path) -> None:
        import pypdf
        from pypdf.errors import PdfReadError

        try:
            self._pdf = pypdf.PdfReader(path)
            if self._pdf.is_encrypted and not self._pdf.decrypt(""):  # "" opens owner-only protection
                raise SkipFile("encrypted PDF (password protected)")
            self.page_count = len(self._pdf.pages)
        except PdfReadError as error:
            raise ValueError(f"corrupt or truncated PDF: {error}") from None
        self.title = self._pdf.metadata.title if self._pdf.metadata else None

    def page_text(self, index: int) -> str:
        return self._pdf.pages[index].extract_text()

    def is_empty(self, index: int) -> bool:
        return False  # only asked for pages to OCR, which pypdf cannot render anyway

    def close(self) -> None:
        self._pdf.close()
