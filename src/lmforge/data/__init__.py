"""Data: from the user's text files to token files on disk to (x, y) training batches.

corpus  the built-in demo corpus;  prepare  ingests documents and tokenizes them into a dataset folder (train.bin, val.bin,
meta.json);  shards  reads that folder back;  loader  cuts batches from it;  templates, sft  instruction data;
classify  labelled texts.
Importing the package loads nothing heavy: the names below are imported on first use (the CLI starts fast).
The `prepare` function is imported from its module, lmforge.data.prepare, which shares its name.
"""

from importlib import import_module

_EXPORTS = {
    "TokenBatches": "lmforge.data.loader",
    "default_corpus_files": "lmforge.data.corpus",
    "ensure_prepared": "lmforge.data.prepare",
    "open_tokens": "lmforge.data.shards",
    "read_meta": "lmforge.data.shards",
    "token_dtype": "lmforge.data.shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
