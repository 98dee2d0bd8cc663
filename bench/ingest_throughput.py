"""Ingest throughput: MB/s of text files, pages/s of text-layer PDFs, seconds per OCR'd image, peak memory.

    python bench/ingest_throughput.py [--shared ../shared/datasets] [--workers 2]

Runs the real pipeline (readers, cleaning, dedup) with a cold cache in a temporary folder and prints
one line per corpus plus the peak resident memory of the main process and of its worker processes.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from lmforge.ingest.config import IngestConfig
from lmforge.ingest.pipeline import ingest


def run(name: str, sources: list[Path], workers: int, unit: str, count) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IngestConfig(workers=workers, cache_dir=str(Path(tmp) / "cache"))
        start = time.perf_counter()
        report = ingest(sources, Path(tmp) / "out", cfg, quiet=True)
        seconds = time.perf_counter() - start
    s = report["summary"]
    amount = count(report)
    print(f"{name:<28} {s['files']:>4} files  {s['bytes_read'] / 1e6:7.2f} MB in {seconds:6.2f} s  "
          f"-> {amount / seconds:8.2f} {unit}/s  ({s['documents_kept']} documents kept, "
          f"{s['ok']} ok / {s['skipped']} skipped / {s['failed']} failed)")


def write_text_pdf(path: Path, n_pages: int) -> None:
    """A PDF of n_pages pages of prose with a real text layer (matplotlib writes TrueType text)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for page in range(n_pages):
            fig = Figure(figsize=(8.5, 11))
            for line in range(40):
                fig.text(0.05, 0.96 - line * 0.023, f"Page {page} line {line}: the survey counted seals, "
                         f"terns and {page * 40 + line} grey herons along the estuary.", fontsize=9)
            pdf.savefig(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    shared = Path(args.shared)
    text_mb = lambda r: r["summary"]["bytes_read"] / 1e6  # noqa: E731
    run("gutenberg-nltk (text)", [shared / "gutenberg-nltk"], args.workers, "MB", text_mb)
    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "survey.pdf"
        write_text_pdf(pdf, 200)
        run("200-page text-layer PDF", [pdf], args.workers, "pages", lambda r: 200)
    run("sample-docs/pdf (text layer)", [shared / "sample-docs" / "pdf"], args.workers, "files",
        lambda r: r["summary"]["ok"])
    ocr = shared / "sample-docs" / "ocr"
    images = [p for p in sorted(ocr.iterdir()) if p.suffix in {".png", ".jpg", ".tif"}]
    run("sample-docs/ocr images", images, args.workers, "images",
        lambda r: sum(f["status"] == "ok" for f in r["files"]))
    run("gutenberg + sample-docs", [shared / "gutenberg-nltk", shared / "sample-docs"], args.workers, "MB", text_mb)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: main process {own:.0f} MB, largest worker {children:.0f} MB")


if __name__ == "__main__":
    main()
