"""Pictures of text (scans, photos of pages, screenshots): read by OCR.

Handles whatever Pillow opens: png, jpg/jpeg, tif/tiff, bmp, gif, webp. A multi-page TIFF (what
scanners and fax software write) holds one page per frame, so every frame is read; the frames of
an animated GIF or WebP mostly repeat each other, so only the first is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..record import Record, ReaderOptions, SkipFile
from .ocr import ocr_image

if TYPE_CHECKING:
    from PIL.Image import Image


def read_image(path: Path, options: ReaderOptions) -> Iterator[Record]:
    """One Record per image file: the text Tesseract finds in it (in every page of a TIFF)."""
    if not options.ocr:
        raise SkipFile("OCR is off")
    try:
        from PIL import ImageSequence
    except ImportError:
        raise SkipFile("reading images needs Pillow: pip install 'lmforge[ingest]'") from None

    with _open_image(path) as image:
        width, height = image.size
        frames = ImageSequence.Iterator(image) if image.format == "TIFF" else [image]
        texts = [ocr_image(frame, options.ocr_language) for frame in frames]
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise SkipFile("no text found in image")
    yield Record(text=text, source=str(path), format="image", meta={"frames": len(texts), "width": width, "height": height})


def _open_image(path: Path) -> Image:
    """The image, decoded now, so that a corrupt or truncated file fails here with a clear message."""
    from PIL import Image

    try:
        image = Image.open(path)
    except OSError as error:  # includes UnidentifiedImageError: no format Pillow knows
        raise ValueError(f"corrupt image or unknown image format: {error}") from None
    try:
        image.load()
    except OSError as error:  # e.g. "image file is truncated"
        image.close()
        raise ValueError(f"corrupt or truncated image: {error}") from None
    return image
