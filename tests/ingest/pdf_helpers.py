"""Documents made on the fly for the PDF and image reader tests: images of text, and PDFs.

A PDF page is either a list of lines (typeset by matplotlib, so the page has a real text layer)
or an image (a "scanned" page: pixels only, nothing for a text extractor to find).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.font_manager import findfont  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

PAGE_INCHES = (8.27, 11.69)  # A4


def text_image(lines: list[str], font_px: int = 36, mode: str = "L") -> Image.Image:
    """Black lines of text on white (transparent for mode "RGBA"), in DejaVu Sans, as a scan would look."""
    font = ImageFont.truetype(findfont("DejaVu Sans"), font_px)
    line_px = int(font_px * 1.6)
    width = max(int(font.getlength(line)) for line in lines) + 2 * font_px
    image = Image.new(mode, (width, line_px * len(lines) + 2 * font_px), "white" if mode != "RGBA" else (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((font_px, font_px + row * line_px), line, font=font, fill="black")
    return image


def write_pdf(path: Path, pages: list[list[str] | Image.Image], title: str | None = None) -> Path:
    """A PDF with one page per item: lines of real text, or an image with no text layer."""
    plt.rcParams["pdf.fonttype"] = 42  # embed TrueType fonts, which keeps the text extractable
    with PdfPages(path) as pdf:
        for page in pages:
            if isinstance(page, Image.Image):
                figure = plt.figure(figsize=(page.width / 100, page.height / 100), dpi=100)
                figure.figimage(np.asarray(page.convert("L")), cmap="gray", vmin=0, vmax=255)
            else:
                figure = plt.figure(figsize=PAGE_INCHES)
                for row, line in enumerate(page):
                    figure.text(0.1, 0.9 - 0.03 * row, line, fontsize=12)
            pdf.savefig(figure)
            plt.close(figure)
        if title:
            pdf.infodict()["Title"] = title
    return path
