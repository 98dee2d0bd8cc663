"""Ingest throughput: MB/s of text files, pages/s of text-layer PDFs, seconds per OCR'd image, peak memory.

    python bench/ingest_throughput.py [--testdata testdata] [--workers 2]

Runs the real pipeline (readers, cleaning, dedup) with a cold cache in a temporary folder and prints
one line per corpus plus the peak resident memory of the main process and of its worker processes.
It reads only the repository's testdata/ folder and files it writes itself: the plain-text corpus is
tiny shakespeare cut into 40 files of about 28 KB (so the workers share the reading), the PDF one a
200-page text-layer PDF it draws, and the rest are the real documents in testdata/sample-docs.
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


def write_text_files(folder: Path, text: str, n_files: int) -> Path:
    """Cut `text` at line ends into n_files files of about equal size (distinct, so dedup keeps them all)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = text.splitlines(keepends=True)
    per_file = -(-len(lines) // n_files)
    for i in range(n_files):
        (folder / f"part-{i:02d}.txt").write_text("".join(lines[i * per_file:(i + 1) * per_file]), encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--testdata", default=str(Path(__file__).resolve().parents[1] / "testdata"),
                        help="the repository's testdata/ folder (default: found next to bench/)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    testdata = Path(args.testdata)
    samples = testdata / "sample-docs"
    text_mb = lambda r: r["summary"]["bytes_read"] / 1e6  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        text = (testdata / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        corpus = write_text_files(Path(tmp) / "shakespeare", text, 40)
        run("tinyshakespeare, 40 files", [corpus], args.workers, "MB", text_mb)
        pdf = Path(tmp) / "survey.pdf"
        write_text_pdf(pdf, 200)
        run("200-page text-layer PDF", [pdf], args.workers, "pages", lambda r: 200)
        run("sample-docs/pdf (text layer)", [samples / "pdf"], args.workers, "files",
            lambda r: sum(f["status"] == "ok" and f["format"] == "pdf" for f in r["files"]))
        ocr = samples / "ocr"
        images = [p for p in sorted(ocr.iterdir()) if p.suffix in {".png", ".jpg", ".tif"}]
        run("sample-docs/ocr images", images, args.workers, "images",
            lambda r: sum(f["status"] == "ok" for f in r["files"]))
        run("shakespeare + sample-docs", [corpus, samples], args.workers, "MB", text_mb)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: main process {own:.0f} MB, largest worker {children:.0f} MB")


if __name__ == "__main__":
    main()
