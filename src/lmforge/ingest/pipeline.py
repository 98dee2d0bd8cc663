"""The ingest pipeline: files -> readers (in parallel) -> cleaning -> dedup -> documents.jsonl + report.

1. Walk the sources (archives opened like folders, under limits) and read each file with the
   reader for its format, in worker processes run by supervisor.py: a file that takes longer than
   file_timeout_s, or whose reader dies (out of memory, a crash), fails alone and the ingest goes
   on. Each file's records go to a cache file named by the file's content hash, so a re-run skips
   unchanged files and the main process never holds a whole corpus.
2. Pass one over the cached records counts lines repeated across documents (boilerplate).
3. Pass two cleans each record, drops repeated lines, filters and deduplicates, and appends the
   survivors to documents.jsonl. Every file ends up in ingest_report.json as ok, skipped or failed
   with its reason, and every document dropped from an ok file is counted under its file by the
   check that dropped it (the first few listed with the reason in words); a bad file never stops
   the ingest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from ..utils.files import file_sha1
from ..utils.progress import progress_bar
from .boilerplate import BoilerplateFinder
from .clean import PROSE_FORMATS, CleanStats, Drop, clean_or_drop, normalized
from .config import IngestConfig
from .dedup import Deduplicator
from .archives import ArchiveLimits
from .limits import cut_long_lines
from .readers import READERS
from .record import ReaderOptions, Record, SkipFile, note_limit
from .supervisor import Lost, run_supervised
from .walk import SkippedItem, WorkItem, scratch_folder, walk

log = logging.getLogger("lmforge.ingest")

DOCUMENTS_FILE = "documents.jsonl"
REPORT_FILE = "ingest_report.json"
# Part of every cache key: bump it when a reader's output changes so stale cache entries are not reused.
READER_VERSION = 3  # 2: "automatically generated" marks generated code; 3: limits on pages, lines, OCR time
# Cache entries no ingest has used for this long are deleted at the end of an ingest (their files changed,
# moved away, or were read with other settings).
CACHE_MAX_AGE_DAYS = 30
# Dropped documents listed with their reason per file (all are counted): a table whose rows are
# mostly too short would otherwise list thousands of identical entries.
DROPS_LISTED_PER_FILE = 20
_CACHE_FILE = re.compile(r"[0-9a-f]{40}\.(jsonl|problems\.json|tmp\d+)")  # what read_item writes (sha1 keys)


@dataclass
class FileResult:
    source: str
    group: str
    format: str | None
    status: str                 # "ok" | "skipped" | "failed"
    reason: str = ""
    bytes: int = 0
    records: int = 0
    documents_kept: int = 0
    chars_kept: int = 0
    cached: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    documents_dropped: dict[str, int] = field(default_factory=dict)  # check -> documents it dropped
    dropped: list[dict] = field(default_factory=list)  # {"document": n, "check", "reason"}, the first few
    cache_path: str | None = None

    def add_drop(self, document: int, drop: Drop) -> None:
        self.documents_dropped[drop.check] = self.documents_dropped.get(drop.check, 0) + 1
        if len(self.dropped) < DROPS_LISTED_PER_FILE:
            self.dropped.append({"document": document, "check": drop.check, "reason": drop.reason})


# ---- reading (runs in worker processes) ----------------------------------------------------------
def _cache_key(data_hash: str, fmt: str, options: ReaderOptions) -> str:
    settings = json.dumps({"v": READER_VERSION, "format": fmt, **asdict(options)}, sort_keys=True)
    return hashlib.sha1(f"{data_hash}:{settings}".encode()).hexdigest()


def read_item(item: WorkItem, options: ReaderOptions, cache_dir: Path) -> FileResult:
    """Read one file into its cache file of records; never raises."""
    start = time.perf_counter()
    result = FileResult(source=item.source, group=item.group, format=None, status="ok")
    try:
        result.bytes = item.path.stat().st_size
        result.format = item.format
        if result.format is None:
            raise SkipFile("binary file of no supported format")
        if result.bytes == 0:
            raise SkipFile("empty file")
        cache_path = cache_dir / f"{_cache_key(file_sha1(item.path), result.format, options)}.jsonl"
        result.cache_path = str(cache_path)
        problems_path = cache_path.with_suffix(".problems.json")
        if cache_path.is_file():
            result.cached = True
            _mark_used(cache_path, problems_path)
            with open(cache_path, encoding="utf-8") as f:
                result.records = sum(1 for _ in f)
            if problems_path.is_file():  # a cached file still reports its malformed lines and limits hit
                result.problems = json.loads(problems_path.read_text(encoding="utf-8"))
        else:
            result.records = _read_into_cache(item, result.format, options, cache_path, result.problems)
            if result.problems:
                problems_path.write_text(json.dumps(result.problems), encoding="utf-8")
        if result.records == 0:
            raise SkipFile("no text found")
    except SkipFile as exc:
        result.status, result.reason = "skipped", str(exc)
    except MemoryError:
        result.status, result.reason = "failed", ("MemoryError: reading it needs more memory than a reader "
                                                  "process may use (ingest.worker_memory_mb)")
    except RecursionError:
        result.status, result.reason = "failed", "RecursionError: nested too deeply to read"
    except Exception as exc:  # a corrupt file fails alone; the ingest goes on
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}".strip()
        log.debug("reading %s failed:\n%s", item.source, traceback.format_exc())
    result.seconds = time.perf_counter() - start
    return result


def _mark_used(*paths: Path) -> None:
    """Touch cache files a run used: prune_cache removes the ones no run has used for a while."""
    for path in paths:
        if path.is_file():
            os.utime(path)


def prune_cache(cache_dir: Path, max_age_days: float = CACHE_MAX_AGE_DAYS) -> int:
    """Delete cache files no ingest has read or written for max_age_days (files since changed or gone,
    other settings, left-over temporary files); returns how many were deleted."""
    cutoff = time.time() - max_age_days * 86400
    deleted = 0
    for path in cache_dir.glob("*"):
        if not _CACHE_FILE.fullmatch(path.name):  # only files this cache wrote, whatever else the folder holds
            continue
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                deleted += 1
        except OSError:  # another ingest may be using the cache at the same time: leave it
            pass
    return deleted


def _read_into_cache(item: WorkItem, fmt: str, options: ReaderOptions, cache_path: Path, problems: list) -> int:
    reader = READERS[fmt]
    tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
    count = lines_cut = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in reader(item.path, options, problems):
                text, cut = cut_long_lines(record.text, options.max_line_chars)
                lines_cut += cut
                if text.strip():
                    f.write(json.dumps({"text": text, "format": record.format, "meta": record.meta},
                                       ensure_ascii=False) + "\n")
                    count += 1
        os.replace(tmp, cache_path)  # only complete results enter the cache
    finally:
        tmp.unlink(missing_ok=True)
    if lines_cut:
        note_limit(problems, f"{lines_cut:,} line(s) longer than {options.max_line_chars:,} characters cut to "
                             "that length (ingest.max_line_chars)")
    return count


def _read_all(items: list[WorkItem], options: ReaderOptions, cache_dir: Path, cfg: IngestConfig,
              workers: int) -> Iterator[FileResult]:
    """Each item's FileResult, in the items' order, read in supervised worker processes."""
    # read_item is looked up here, at call time, so a test can swap in a reader that hangs or dies.
    results = run_supervised(partial(read_item, options=options, cache_dir=cache_dir), items, workers,
                             seconds=cfg.file_timeout_s, memory_bytes=cfg.worker_memory_mb * 1024 * 1024)
    for item, result in zip(items, results):
        yield _lost_file(item, result, cfg) if isinstance(result, Lost) else result


def _lost_file(item: WorkItem, lost: Lost, cfg: IngestConfig) -> FileResult:
    """A failed FileResult for a file whose reader was stopped or died."""
    if lost.timed_out:
        reason = f"reading took longer than {cfg.file_timeout_s:g} s and was stopped (ingest.file_timeout_s)"
    else:
        reason = (f"{lost.reason}; a fresh reader took over (if it ran out of memory: ingest.worker_memory_mb "
                  f"allows {cfg.worker_memory_mb:,} MB)")
    return FileResult(source=item.source, group=item.group, format=item.format, status="failed", reason=reason,
                      bytes=item.path.stat().st_size)


def cached_records(result: FileResult) -> Iterator[Record]:
    with open(result.cache_path, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            yield Record(data["text"], result.source, data["format"], data["meta"])


# ---- the whole ingest -----------------------------------------------------------------------------
def ingest(sources: Sequence[str | Path], out_dir: str | Path, cfg: IngestConfig | None = None,
           quiet: bool = False) -> dict:
    """Read, clean and deduplicate every file under `sources` into out_dir/documents.jsonl.

    Returns the report (also written to out_dir/ingest_report.json). Raises ValueError when no
    document at all was kept, after writing the report that says why.
    """
    cfg = cfg or IngestConfig()
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = cfg.reader_options()
    workers = cfg.workers or os.cpu_count() or 1

    with scratch_folder() as scratch:
        walked = list(walk(sources, scratch, ArchiveLimits.from_config(cfg)))
        items = [w for w in walked if isinstance(w, WorkItem)]
        results = [FileResult(s.source, "", s.format, "skipped", s.reason) for s in walked
                   if isinstance(s, SkippedItem)]
        bar = progress_bar(total=len(items), desc="reading", unit="file", disable=quiet)
        for result in _read_all(items, options, cache_dir, cfg, workers):
            results.append(result)
            bar.update(1)
        bar.close()
    prune_cache(cache_dir)
    ok = [r for r in results if r.status == "ok"]
    stats = _clean_and_write(ok, out_dir / DOCUMENTS_FILE, cfg, quiet)
    report = build_report(results, stats, time.perf_counter() - start, workers)
    _write_json(out_dir / REPORT_FILE, report)
    if not quiet:
        print(format_summary(report))
    summary = report["summary"]
    if summary["documents_kept"] == 0:
        reasons = [f"{n} x {reason}" for reason, n in summary["top_reasons"].items()]
        reasons += [f"{n} x dropped: {check}" for check, n in summary["documents_dropped"].items()]
        raise ValueError(f"no document was kept from {', '.join(map(str, sources))} "
                         f"({'; '.join(reasons) or 'no files found'})")
    return report


def _clean_and_write(ok: list[FileResult], documents_path: Path, cfg: IngestConfig, quiet: bool) -> CleanStats:
    clean = cfg.clean
    finder = BoilerplateFinder(clean) if clean.boilerplate else None
    if finder is not None:  # pass one: which lines repeat across the prose documents of a group
        for result in ok:
            for record in cached_records(result):
                if record.format in PROSE_FORMATS:
                    finder.observe(result.group, normalized(record, clean)[0])  # as pass two will see it
    dedup = Deduplicator(clean)
    stats = CleanStats()
    bar = progress_bar(total=sum(r.records for r in ok), desc="cleaning", unit="doc", disable=quiet)
    with open(documents_path, "w", encoding="utf-8") as out:
        for result in ok:
            for number, record in enumerate(cached_records(result), start=1):
                bar.update(1)
                kept = _clean_one(record, result.group, finder, dedup, clean, stats)
                if isinstance(kept, Drop):
                    result.add_drop(number, kept)
                    continue
                result.documents_kept += 1
                result.chars_kept += len(kept.text)
                out.write(json.dumps({"text": kept.text, "source": kept.source, "format": kept.format,
                                      "meta": kept.meta}, ensure_ascii=False) + "\n")
    bar.close()
    return stats


def _clean_one(record: Record, group: str, finder, dedup, clean, stats: CleanStats) -> Record | Drop:
    boilerplate = (lambda text: finder.remove(group, text)) if finder is not None else None
    cleaned = clean_or_drop(record, clean, stats, boilerplate)
    if isinstance(cleaned, Drop):
        return cleaned
    kind = dedup.is_duplicate(cleaned.text)
    if kind is not None:
        setattr(stats, f"{kind}_duplicates", getattr(stats, f"{kind}_duplicates") + 1)
        return _duplicate_drop(kind, clean)
    return cleaned


def _duplicate_drop(kind: str, clean) -> Drop:
    if kind == "exact":
        return Drop("exact_duplicate", "exact duplicate of an earlier document (same words, ignoring case "
                                       "and whitespace)")
    return Drop("near_duplicate", f"near duplicate of an earlier document (estimated Jaccard similarity of "
                                  f"{clean.shingle_words}-word shingles at least {clean.near_threshold:g})")


# ---- the report -----------------------------------------------------------------------------------
def build_report(results: list[FileResult], stats: CleanStats, seconds: float, workers: int) -> dict:
    by_format: dict[str, Counter] = {}
    for r in results:
        by_format.setdefault(r.format or "binary", Counter())[r.status] += 1
    reasons = Counter(f"{r.status}: {r.reason}" for r in results if r.status != "ok")
    dropped = Counter()
    for r in results:
        dropped.update(r.documents_dropped)
    text_bytes = sum(r.bytes for r in results if r.status == "ok")
    summary = {
        "files": len(results),
        "ok": sum(r.status == "ok" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "by_format": {fmt: dict(counts) for fmt, counts in sorted(by_format.items())},
        "top_reasons": dict(reasons.most_common(10)),
        "documents_kept": sum(r.documents_kept for r in results),
        "chars_kept": sum(r.chars_kept for r in results),
        "documents_dropped": dict(dropped.most_common()),  # by the check that dropped them, duplicates included
        "bytes_read": text_bytes,
        "cleaning": stats.as_dict(),
        "seconds": round(seconds, 3),
        "workers": workers,
    }
    files = [{k: v for k, v in asdict(r).items() if k not in {"cache_path", "group"}} for r in results]
    return {"summary": summary, "files": files}


def format_summary(report: dict) -> str:
    s = report["summary"]
    lines = [f"ingested {s['files']} files in {s['seconds']:.1f} s with {s['workers']} workers: "
             f"{s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed"]
    for fmt, counts in s["by_format"].items():
        lines.append(f"  {fmt:<9} " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for reason, n in s["top_reasons"].items():
        lines.append(f"  {n:>4} x {reason}")
    c = s["cleaning"]
    lines.append(f"kept {s['documents_kept']:,} documents, {s['chars_kept']:,} characters; "
                 f"removed {c.get('exact_duplicates', 0)} exact and {c.get('near_duplicates', 0)} near duplicates, "
                 f"{c.get('lines_removed_boilerplate', 0)} boilerplate lines, {c.get('slop_lines_removed', 0)} "
                 "slop lines")
    dropped = s.get("documents_dropped") or {}
    lines.append(f"dropped {sum(dropped.values()):,} documents" + (": " if dropped else "") +
                 ", ".join(f"{n:,} {check}" for check, n in dropped.items()) +
                 (" (per file in ingest_report.json: files[].dropped)" if dropped else ""))
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
