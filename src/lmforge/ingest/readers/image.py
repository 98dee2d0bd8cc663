"""Pictures of text (scans, photos of pages, screenshots): read by OCR.

Handles whatever Pillow opens: png, jpg/jpeg, tif/tiff, bmp, gif, webp. A multi-page TIFF (what
scanners and fax software write) holds one page per frame, so every frame is read; the frames of
an animated GIF or WebP mostly repeat each other, so only the first is.

An image's size is checked from its header before any pixel is decoded: a 1 KB PNG can claim
60000 x 60000 pixels (3.6 GB once decoded). OCR time per file is capped too (max_ocr_seconds).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..record import Record, ReaderOptions, SkipFile, note_limit
from .ocr import OcrClock, OcrTimeUp

if TYPE_CHECKING:
    from PIL.Image import Image


def read_image(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per image file: the text Tesseract finds in it (in every page of a TIFF)."""
    if not options.ocr:
        raise SkipFile("OCR is off")
    try:
        from PIL import ImageSequence
    except ImportError:
        raise SkipFile("reading images needs Pillow: pip install 'lmforge[ingest]'") from None

    clock = OcrClock(options.max_ocr_seconds)
    texts: list[str] = []
    time_up = ""
    with _open_image(path, options.max_image_pixels) as image:
        width, height = image.size
        frames = ImageSequence.Iterator(image) if image.format == "TIFF" else [image]
        for number, frame in enumerate(frames, start=1):
            _check_size(frame, options.max_image_pixels, f"frame {number}")  # each TIFF page has its own size
            try:
                texts.append(clock.ocr(frame, options.ocr_language))
            except OcrTimeUp:
                time_up = (f"image: OCR stopped after {options.max_ocr_seconds:g} s at frame {number} "
                           "(ingest.max_ocr_seconds)")
                break
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise SkipFile("; ".join(filter(None, ["no text found in image", time_up])))
    if time_up:
        note_limit(problems, time_up)
    yield Record(text=text, source=str(path), format="image", meta={"frames": len(texts), "width": width, "height": height})


def _open_image(path: Path, max_pixels: int) -> Image:
    """The image, decoded now (once its header's size is checked), so that a corrupt or truncated
    file fails here with a clear message."""
    from PIL import Image

    # Pillow's own check (Image.MAX_IMAGE_PIXELS) is a process-wide setting that only warns up to
    # twice its value; ours is the reader option, checked below from the header alone.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path)  # reads the header only
    except OSError as error:  # includes UnidentifiedImageError: no format Pillow knows
        raise ValueError(f"corrupt image or unknown image format: {error}") from None
    try:
        _check_size(image, max_pixels, "image")
        image.load()
    except SkipFile:
        image.close()
        raise
    except OSError as error:  # e.g. "image file is truncated"
        image.close()
        raise ValueError(f"corrupt or truncated image: {error}") from None
    return image


def _check_size(image: Image, max_pixels: int, what: str) -> None:
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise SkipFile(f"{what} of {width:,} x {height:,} pixels, more than ingest.max_image_pixels "
                       f"({max_pixels:,}): not decoded")
