"""IngestConfig: how documents are read; CleanConfig: how they are cleaned, filtered and deduplicated.

Every cleaning step can be switched off on its own, so when something useful disappears from a
corpus you can find the step responsible by turning steps off one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .record import ReaderOptions

SLOP_ACTIONS = ("drop_line", "drop_document")


@dataclass
class CleanConfig:
    """Cleaning, filtering and deduplication of ingested text."""

    normalize: bool = field(default=True, metadata={
        "help": "Unicode NFC, drop control characters, unify line ends and odd spaces (indentation is kept)"})
    dehyphenate: bool = field(default=True, metadata={
        "help": "join words split at line ends ('infor-\\nmation') in prose (pdf, image, text, markdown, html)"})
    boilerplate: bool = field(default=True, metadata={
        "help": "drop lines repeated across many documents of one folder/archive, and page-number lines in PDFs"})
    boilerplate_min_docs: int = field(default=5, metadata={
        "help": "a line is boilerplate only if it appears in at least this many documents of one folder/archive"})
    boilerplate_min_share: float = field(default=0.5, metadata={
        "help": "... and in at least this share of that folder's/archive's documents"})
    min_chars: int = field(default=50, metadata={
        "help": "drop documents shorter than this many characters after cleaning"})
    max_non_text_share: float = field(default=0.5, metadata={
        "help": "drop documents whose non-space characters are more than this share digits/symbols (code is exempt)"})
    slop_filter: bool = field(default=True, metadata={
        "help": "remove chatbot boilerplate ('As an AI language model', 'I hope this helps!') from non-code documents"})
    slop_phrases: list[str] = field(default_factory=list, metadata={
        "help": "extra phrases for the slop filter (case-insensitive), added to the built-in list"})
    slop_action: str = field(default="drop_line", metadata={
        "help": "drop_line: cut each sentence with a phrase (its line if nothing is left), and drop the "
                "document when such lines are dense (2+ lines and 25%+ of them); "
                "drop_document: drop any document with a phrase"})
    code_filter: bool = field(default=True, metadata={
        "help": "drop source files that are data or machine output rather than code (generated tables, encoded "
                "blobs, minified lines, tool-written files); the code_* limits below; prose and tables untouched"})
    code_max_data_line_share: float = field(default=0.7, metadata={
        "help": "code: drop a file when more than this share of its code lines hold only literals and separators "
                "(judged from 20 such lines up)"})
    code_max_number_share: float = field(default=0.4, metadata={
        "help": "code: drop a file when more than this share of its non-space characters are numeric literals"})
    code_max_encoded_run: int = field(default=256, metadata={
        "help": "code: drop a file holding a longer run of base64/hex characters (an embedded blob)"})
    code_max_line_chars: int = field(default=1000, metadata={
        "help": "code: drop a file with a longer line (The Stack / StarCoder: 1000)"})
    code_max_mean_line_chars: float = field(default=100, metadata={
        "help": "code: drop a file whose lines are longer than this on average (The Stack / StarCoder: 100)"})
    code_min_alnum_share: float = field(default=0.25, metadata={
        "help": "code: drop a file with a smaller share of letters and digits (The Stack / StarCoder: 0.25)"})
    pii: bool = field(default=False, metadata={
        "help": "replace e-mail addresses with <EMAIL> and phone numbers with <PHONE>"})
    dedup_exact: bool = field(default=True, metadata={
        "help": "drop documents identical to an earlier one (ignoring case and whitespace)"})
    dedup_near: bool = field(default=True, metadata={
        "help": "drop documents nearly identical to an earlier one (MinHash of word shingles)"})
    near_threshold: float = field(default=0.8, metadata={
        "help": "estimated Jaccard similarity of word shingles above which documents are near duplicates"})
    shingle_words: int = field(default=5, metadata={
        "help": "words per shingle for near-duplicate detection"})
    num_perm: int = field(default=128, metadata={
        "help": "MinHash permutations: more = more accurate similarity, slower and more memory"})

    @classmethod
    def off(cls) -> "CleanConfig":
        """A config under which cleaning changes nothing: every step and filter switched off."""
        return cls(normalize=False, dehyphenate=False, boilerplate=False, min_chars=0, max_non_text_share=1.0,
                   slop_filter=False, code_filter=False, pii=False, dedup_exact=False, dedup_near=False)

    def validate(self) -> None:
        if self.slop_action not in SLOP_ACTIONS:
            raise ValueError(f"slop_action: must be one of {', '.join(SLOP_ACTIONS)}, got {self.slop_action!r}")
        for name in ("boilerplate_min_share", "max_non_text_share", "code_max_data_line_share",
                     "code_max_number_share", "code_min_alnum_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.near_threshold < 1.0:
            raise ValueError(f"near_threshold: must be in (0, 1), got {self.near_threshold}")
        for name in ("boilerplate_min_docs", "shingle_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("code_max_encoded_run", "code_max_line_chars", "code_max_mean_line_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.min_chars < 0:
            raise ValueError(f"min_chars: must be at least 0, got {self.min_chars}")
        # MinHashLSH needs enough permutations to split into bands; 16 is a practical floor.
        if self.num_perm < 16:
            raise ValueError(f"num_perm: must be at least 16, got {self.num_perm}")


@dataclass
class IngestConfig:
    """Turning a folder of documents into clean training text (``lmforge ingest``)."""

    workers: int = field(default=0, metadata={"help": "processes reading files in parallel; 0 = one per CPU core"})
    cache_dir: str = field(default="~/.cache/lmforge/ingest", metadata={
        "help": "where each file's extracted text is cached, so re-runs skip unchanged files"})
    text_fields: list[str] | None = field(default=None, metadata={
        "help": "table/JSON fields to take text from; null = text/content/body if present, else every string"})
    ocr: bool = field(default=True, metadata={
        "help": "OCR images and PDF pages without a text layer (needs Tesseract)"})
    ocr_language: str = field(default="eng", metadata={"help": "Tesseract language code(s), e.g. eng+deu"})
    pdf_min_page_chars: int = field(default=20, metadata={
        "help": "a PDF page with fewer extracted characters is treated as scanned (and OCRed)"})
    # Limits: what one file may cost. A folder of documents can hold anything (a zip bomb, a FIFO, a
    # scan of 3,000 blank pages, a 1 GB line); each limit stops one file, reports why in
    # ingest_report.json (naming the setting), and the ingest goes on. 0 switches a limit off.
    file_timeout_s: float = field(default=900, metadata={
        "help": "seconds one file may take to read; a reader still busy then is stopped and the file "
                "reported failed (raise it for multi-GB tables)"})
    worker_memory_mb: int = field(default=2048, metadata={
        "help": "address space one reader process (and the OCR program it starts) may use; a file that "
                "needs more fails alone"})
    max_file_mb: float = field(default=64, metadata={
        "help": "text, markdown, code and HTML files: only this many MB are read (streamed formats: "
                "CSV, JSON, JSONL, SQL, Parquet are not cut)"})
    max_line_chars: int = field(default=1_000_000, metadata={
        "help": "a longer line in any document is cut to this length (such lines are machine output, "
                "and cost memory and time in cleaning)"})
    max_pdf_pages: int = field(default=2000, metadata={"help": "PDF pages read per file; later pages are left out"})
    max_image_pixels: int = field(default=100_000_000, metadata={
        "help": "images larger than this (width x height, from the file's header) are not decoded; "
                "larger PDF pages are rendered smaller for OCR"})
    max_ocr_seconds: float = field(default=600, metadata={
        "help": "OCR time per file (image or PDF); pages after it are left unread"})
    max_archive_mb: float = field(default=20_000, metadata={
        "help": "bytes unpacked from one archive, nested archives inside it included"})
    max_archive_ratio: float = field(default=100, metadata={
        "help": "an archive may unpack to this many times its size (at least 1 MB counted): zip bombs "
                "reach 1000x, text 3-10x"})
    max_archive_members: int = field(default=100_000, metadata={
        "help": "members unpacked from one archive, nested archives inside it included"})
    max_archive_depth: int = field(default=3, metadata={"help": "archives inside archives, this many levels deep"})
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"help": "cleaning, filtering and deduplication"})

    def validate(self) -> None:
        for name in ("workers", "file_timeout_s", "worker_memory_mb", "max_file_mb", "max_line_chars",
                     "max_pdf_pages", "max_image_pixels", "max_ocr_seconds", "max_archive_mb",
                     "max_archive_ratio", "max_archive_members", "max_archive_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be at least 0, got {getattr(self, name)}")

    def reader_options(self) -> ReaderOptions:
        return ReaderOptions(text_fields=self.text_fields, ocr=self.ocr, ocr_language=self.ocr_language,
                             pdf_min_page_chars=self.pdf_min_page_chars, max_file_mb=self.max_file_mb,
                             max_line_chars=self.max_line_chars, max_pdf_pages=self.max_pdf_pages,
                             max_image_pixels=self.max_image_pixels, max_ocr_seconds=self.max_ocr_seconds)
