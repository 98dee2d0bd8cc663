"""Turning documents into a prepared dataset: train a tokenizer, split train/val, write token files.

`prepare` streams: the ingest pipeline reads every file once (any format) into a cleaned
`documents.jsonl`, and every later pass (tokenizer training, encoding) re-reads that file, so neither
the corpus nor its tokens are ever held in memory at once. `ensure_prepared` adds a cache keyed by the
files' contents and the settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from lmforge.data.corpus import source_list
from lmforge.ingest.config import IngestConfig
from lmforge.ingest.pipeline import DOCUMENTS_FILE, ingest
from lmforge.ingest.walk import iter_paths
from lmforge.utils.files import file_sha1
from lmforge.utils.progress import progress_bar
from lmforge.data.shards import SPLITS, TokenFileWriter, is_prepared, split_path, token_dtype, write_meta
from lmforge.tokenizer import Tokenizer, build_tokenizer

# Below this many documents a per-document split is too coarse (one document could be most of the
# corpus), so every document's tail goes to val instead.
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 20

# How much text goes to the tokenizer in one encode_batch call: big enough for its parallelism to pay
# off, small enough that the batch and its token lists fit comfortably in memory.
ENCODE_BATCH_CHARS = 4_000_000

# Part of the cache key: bump it when the prepared format changes so old cache entries are not reused.
CACHE_FORMAT_VERSION = 2  # 2: stratified validation split

# The validation split: how many stratified draws to choose from, and how much of each document zlib
# reads to judge its difficulty (see stratified_val_documents).
SPLIT_CANDIDATES = 16
COMPRESS_SAMPLE_CHARS = 100_000


def prepare(
    sources: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: str = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    seed: int = 1337,
    ingest_cfg: IngestConfig | None = None,
) -> dict:
    """Tokenize the documents in `sources` into a dataset folder `out_dir`; return its meta.json contents.

    The work happens in a temporary folder next to `out_dir` that is renamed into place at the end,
    so an interrupted run never leaves a half-written dataset behind.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    sources = source_list(sources)
    out_dir = Path(out_dir).expanduser()
    _check_replaceable(out_dir)
    work_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        meta = _prepare_into(work_dir, sources, tokenizer, vocab_size, val_fraction, seed, ingest_cfg)
        shutil.rmtree(out_dir, ignore_errors=True)
        work_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return meta


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite a folder unless it is empty or an earlier prepared dataset."""
    if out_dir.exists() and any(out_dir.iterdir()) and not is_prepared(out_dir):
        raise ValueError(
            f"{out_dir} already exists and is not a prepared dataset; choose an empty or new output folder"
        )


def _prepare_into(
    work_dir: Path, sources: list[Path], tokenizer_spec: str, vocab_size: int, val_fraction: float, seed: int,
    ingest_cfg: IngestConfig | None,
) -> dict:
    """Do all of `prepare` inside `work_dir` and return the meta it wrote."""
    documents_path = work_dir / DOCUMENTS_FILE
    report = ingest(sources, work_dir, ingest_cfg)  # writes documents.jsonl and ingest_report.json
    document_count = report["summary"]["documents_kept"]

    def texts() -> Iterator[str]:
        return _read_texts(documents_path)

    tokenizer = build_tokenizer(tokenizer_spec, texts, vocab_size=vocab_size)
    val_documents = stratified_val_documents(list(_read_strata(documents_path)), val_fraction, seed)
    split = choose_split(document_count, val_documents, val_fraction)
    writers = _write_token_files(work_dir, texts(), document_count, tokenizer, split, val_documents, val_fraction)
    tokenizer.save(work_dir)
    meta = {
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer": tokenizer.kind,
        "train_tokens": writers["train"].tokens,
        "val_tokens": writers["val"].tokens,
        "documents": document_count,
        "documents_by_split": {name: writer.documents for name, writer in writers.items()},
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed,
        "sources": [str(source.resolve()) for source in sources],
    }
    write_meta(work_dir, meta)
    return meta


def _read_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)["text"]


def _read_strata(path: Path) -> Iterator[tuple[str, int, int]]:
    """(stratum, length, compressed length) of every document (see stratified_val_documents)."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            folder = record["source"].replace("\\", "/").rpartition("/")[0]  # archive members: "a.zip::dir"
            yield f"{record['format']}:{folder}", len(record["text"]), compressed_size(record["text"])


def compressed_size(text: str) -> int:
    """zlib's size of the text, scaled from at most its first COMPRESS_SAMPLE_CHARS: a cheap measure of
    how predictable the text is, which follows a language model's loss on it."""
    sample = text[:COMPRESS_SAMPLE_CHARS]
    return round(len(zlib.compress(sample.encode("utf-8"), 6)) * len(text) / max(1, len(sample)))


def stratified_val_documents(documents: Sequence[tuple[str, int, int]], val_fraction: float, seed: int) -> set[int]:
    """The indices of the documents held out for validation, chosen to look like the rest.

    `documents` holds (stratum, length, compressed length) per document. A plain random tenth of a few
    hundred documents can easily be easier or harder than the whole (one big generated table, or one big
    hard module, more or less), and the loss measured on it is then off for the whole run. So:
      * the documents are sorted by stratum (format, then folder) and by size within it, and every
        (1/val_fraction)-th one from a random start goes to validation (systematic sampling): each format,
        folder and size range gives validation its share;
      * of SPLIT_CANDIDATES such draws, the one whose validation text compresses most like the training
        text (zlib bits per character) is kept (re-randomisation, as in Morgan & Rubin 2012): difficulty
        is balanced too. On the demo corpus this cut the spread of the val-train loss gap over seeds from
        0.07 to 0.02 nats (docs/training-basics.md).
    Everything is seeded, so the split is stable for a seed.
    """
    if val_fraction == 0:
        return set()
    candidates = [_systematic_sample(documents, val_fraction, f"{seed}:{draw}") for draw in range(SPLIT_CANDIDATES)]
    return min(candidates, key=lambda val: _compressibility_gap(documents, val))


def _systematic_sample(documents: Sequence[tuple[str, int, int]], val_fraction: float, seed: str) -> set[int]:
    order = sorted(range(len(documents)), key=lambda i: (documents[i][0], documents[i][1], _seeded_uniform(seed, i)))
    start = _seeded_uniform(seed, "start")
    return {index for position, index in enumerate(order)
            if math.floor(val_fraction * (position + 1) + start) > math.floor(val_fraction * position + start)}


def _compressibility_gap(documents: Sequence[tuple[str, int, int]], val: set[int]) -> float:
    """|compressed bits per character of val - the same of train|."""
    sums = {True: [0, 0], False: [0, 0]}
    for index, (_, length, compressed) in enumerate(documents):
        sums[index in val][0] += compressed
        sums[index in val][1] += length
    per_char = {side: compressed / max(1, length) for side, (compressed, length) in sums.items()}
    return abs(per_char[True] - per_char[False])


def _seeded_uniform(seed, key) -> float:
    """A number in [0, 1) from a hash: stable across runs, machines and Python versions."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_split(document_count: int, val_documents: set[int], val_fraction: float) -> str:
    """ "stratified" (whole documents go to train or val) or "document_tail" (every document's tail goes to val)."""
    if val_fraction == 0 or (document_count >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT and val_documents):
        return "stratified"
    return "document_tail"


def tail_start(text: str, val_fraction: float) -> int:
    """Where the val part of `text` begins under the "document_tail" split: after the line break nearest
    the cut point, so no line is split between train and val (mid-line only if the text is one line)."""
    cut = round(len(text) * (1 - val_fraction))
    line_breaks = [position + 1 for position in (text.rfind("\n", 0, cut), text.find("\n", cut)) if position != -1]
    if not line_breaks:
        return cut
    return min(line_breaks, key=lambda position: abs(position - cut))


def split_document(index: int, text: str, split: str, val_documents: set[int],
                   val_fraction: float) -> list[tuple[str, str]]:
    """The (split name, text) pieces one document contributes; empty pieces are left out."""
    if split == "stratified":
        return [("val" if index in val_documents else "train", text)]
    start = tail_start(text, val_fraction)
    pieces = [("train", text[:start]), ("val", text[start:])]
    return [(name, piece) for name, piece in pieces if piece]


def _write_token_files(
    work_dir: Path,
    texts: Iterable[str],
    document_count: int,
    tokenizer: Tokenizer,
    split: str,
    val_documents: set[int],
    val_fraction: float,
) -> dict[str, TokenFileWriter]:
    """Encode every document and append its tokens (plus EOT) to train.bin or val.bin; return the writers."""
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {name: TokenFileWriter(split_path(work_dir, name), dtype) for name in SPLITS}
    progress = progress_bar(total=document_count, desc="encoding", unit="doc")
    try:
        for batch in _batches_by_size(enumerate(texts), ENCODE_BATCH_CHARS):
            pieces = [
                piece for index, text in batch for piece in split_document(index, text, split, val_documents, val_fraction)
            ]
            encoded = tokenizer.encode_batch([text for _, text in pieces])
            for (name, _), ids in zip(pieces, encoded):
                writers[name].append_document(ids, tokenizer.eot_id)
            progress.update(len(batch))
    finally:
        progress.close()
        for writer in writers.values():
            writer.close()
    return writers


def _batches_by_size(items: Iterable[tuple[int, str]], max_chars: int) -> Iterator[list[tuple[int, str]]]:
    """Group (index, text) pairs into lists holding about `max_chars` characters of text each."""
    batch, chars = [], 0
    for item in items:
        batch.append(item)
        chars += len(item[1])
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def ensure_prepared(
    sources: str | Path | Sequence[str | Path],
    cache_dir: str | Path,
    tokenizer: str = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    seed: int = 1337,
    ingest_cfg: IngestConfig | None = None,
) -> Path:
    """Return a prepared dataset for `sources`, preparing it into `cache_dir` only when needed.

    A single folder that already is a prepared dataset is used as is. Otherwise the dataset lives in
    `cache_dir/<key>/`, where the key hashes the files' names and contents and the settings, so
    editing a document or changing a setting prepares afresh and anything else reuses the cache.
    """
    sources = source_list(sources)
    if len(sources) == 1 and is_prepared(sources[0]):
        print(f"using prepared dataset {sources[0]}")
        return sources[0]
    ingest_cfg = ingest_cfg or IngestConfig()
    # Settings that change the text that comes out (not workers or cache location) are part of the key.
    ingest_settings = {k: v for k, v in asdict(ingest_cfg).items() if k not in {"workers", "cache_dir"}}
    settings = {"tokenizer": str(tokenizer), "vocab_size": vocab_size, "val_fraction": val_fraction, "seed": seed,
                "ingest": ingest_settings}
    out_dir = Path(cache_dir).expanduser() / dataset_key(sources, settings)
    if is_prepared(out_dir):
        print(f"reusing prepared dataset {out_dir} (same files and settings)")
        return out_dir
    print(f"preparing dataset into {out_dir}")
    prepare(sources, out_dir, tokenizer, vocab_size, val_fraction, seed, ingest_cfg)
    return out_dir


def dataset_key(sources: Sequence[Path], settings: dict) -> str:
    """A short hash of every source file's relative path and contents, and of `settings`."""
    key = hashlib.sha1(json.dumps({"format": CACHE_FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for source in sources:
        for path in iter_paths(source):
            key.update(_relative_name(path, source).encode())
            key.update(file_sha1(path).encode())
    return key.hexdigest()[:16]


def _relative_name(path: Path, source: Path) -> str:
    # A file named directly counts by its name, so the key does not depend on where the corpus lives.
    return path.name if path == source else path.relative_to(source).as_posix()
