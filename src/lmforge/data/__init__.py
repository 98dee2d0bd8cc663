"""Data: from the user's text files to token files on disk to (x, y) training batches.

corpus  finds and reads documents;  prepare  tokenizes them into a dataset folder (train.bin, val.bin,
meta.json);  shards  reads that folder back;  loader  cuts batches from it.
"""

from lmforge.data.corpus import Document, default_corpus_files, iter_files, read_documents, read_file
from lmforge.data.loader import TokenBatches
from lmforge.data.prepare import ensure_prepared, prepare
from lmforge.data.shards import open_tokens, read_meta, token_dtype

__all__ = [
    "Document",
    "TokenBatches",
    "default_corpus_files",
    "ensure_prepared",
    "iter_files",
    "open_tokens",
    "prepare",
    "read_documents",
    "read_file",
    "read_meta",
    "token_dtype",
]
