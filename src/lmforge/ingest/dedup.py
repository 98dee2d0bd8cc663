"""Deduplication: drop documents that repeat (exactly, or nearly) one seen earlier.

Duplicated text is over-weighted in training and gets memorised, so every copy after the first
is dropped. Two checks, both streaming (one document at a time, nothing compared pairwise):

* exact: the SHA-1 of the text after case-folding and collapsing whitespace, kept in a set.
* near: MinHash of the text's word shingles ("the quick brown fox jumps", "quick brown fox
  jumps over", ...). The share of equal MinHash values estimates the Jaccard similarity of two
  documents' shingle sets. Locality-sensitive hashing (LSH) finds the few earlier documents
  that may be that similar with a few dictionary look-ups, instead of comparing with all, and
  those candidates are checked against ``near_threshold``.

Memory grows by about 1 KB per kept document (its hash, MinHash values and LSH entries).
Near-duplicate detection uses the optional ``datasketch`` package (``pip install
lmforge[ingest]``); without it only exact duplicates are removed, with one warning.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

from .config import CleanConfig

log = logging.getLogger("lmforge.ingest")

# How MinHashLSH trades false positives for false negatives when it picks its bands. LSH only
# proposes candidates, which are then checked against near_threshold, so it leans hard towards
# missing nothing: with 128 permutations and threshold 0.8 it proposes 95% of the pairs at 0.8
# (99% at 0.85) instead of 40% with the default even weights.
LSH_WEIGHTS = (0.05, 0.95)


def normalized_words(text: str) -> list[str]:
    """The words of ``text``, case-folded: copies differing only in case or spacing compare equal."""
    return text.casefold().split()


# MinHash turns each batch of shingles into a (shingles x num_perm) matrix; batches of this size keep
# that matrix near 20 MB however long the document is.
SHINGLE_BATCH = 20_000


def shingles(words: list[str], size: int, start: int = 0, stop: int | None = None) -> list[bytes]:
    """The runs of ``size`` consecutive words starting at positions start..stop-1, encoded for hashing."""
    last = len(words) - size + 1
    stop = last if stop is None else min(stop, last)
    return [" ".join(words[i:i + size]).encode() for i in range(start, stop)]


class Deduplicator:
    """Remembers the documents seen so far and recognises copies of them."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self._exact_hashes: set[bytes] = set()
        self._lsh = None             # MinHashLSH index of kept documents; None = no near check
        self._empty_minhash = None
        self._signatures: list = []  # MinHash values of indexed documents; the index keys are positions here
        if cfg.dedup_near:
            self._start_near_index()

    def _start_near_index(self) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            log.warning("datasketch is not installed, so near-duplicates are kept (only exact copies "
                        "are removed); pip install 'lmforge[ingest]' to remove them too")
            return
        self._lsh = MinHashLSH(threshold=self.cfg.near_threshold, num_perm=self.cfg.num_perm, weights=LSH_WEIGHTS)
        # Creating a MinHash draws its random permutations, which costs more than hashing a whole
        # document; copying one empty MinHash reuses them.
        # zlib.crc32 is a C function: hashing shingles with it is several times faster than datasketch's
        # default SHA-1 wrapper, and 32 bits are all MinHash uses anyway.
        self._empty_minhash = MinHash(num_perm=self.cfg.num_perm, hashfunc=zlib.crc32)

    def is_duplicate(self, text: str) -> str | None:
        """Return "exact" or "near" if ``text`` repeats an earlier document; else remember it, return None."""
        words = normalized_words(text)
        digest = hashlib.sha1(" ".join(words).encode()).digest()
        if digest in self._exact_hashes:
            return "exact"
        if self._is_near_copy(words):
            return "near"
        if self.cfg.dedup_exact:
            self._exact_hashes.add(digest)
        return None

    def _is_near_copy(self, words: list[str]) -> bool:
        """Whether these words nearly repeat an indexed document; if not, they are indexed."""
        # A document shorter than one shingle has nothing to compare: only the exact check applies.
        if self._lsh is None or len(words) < self.cfg.shingle_words:
            return False
        minhash = self._empty_minhash.copy()
        for start in range(0, len(words) - self.cfg.shingle_words + 1, SHINGLE_BATCH):
            minhash.update_batch(shingles(words, self.cfg.shingle_words, start, start + SHINGLE_BATCH))
        signature = minhash.hashvalues
        for key in self._lsh.query(minhash):
            # The share of equal MinHash values estimates the Jaccard similarity.
            if (self._signatures[key] == signature).mean() >= self.cfg.near_threshold:
                return True
        self._lsh.insert(len(self._signatures), minhash)
        self._signatures.append(signature)
        return False
