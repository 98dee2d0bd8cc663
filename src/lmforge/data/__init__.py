"""Data: from the user's text files to token files on disk to (x, y) training batches.

corpus  the built-in demo corpus;  prepare  ingests documents and tokenizes them into a dataset folder (train.bin, val.bin,
meta.json);  shards  reads that folder back;  loader  cuts batches from it.
"""

from lmforge.data.corpus import default_corpus_files
from lmforge.data.loader import TokenBatches
from lmforge.data.prepare import ensure_prepared, prepare
from lmforge.data.shards import open_tokens, read_meta, token_dtype

__all__ = [
    "TokenBatches",
    "default_corpus_files",
    "ensure_prepared",
    "open_tokens",
    "prepare",
    "read_meta",
    "token_dtype",
]
