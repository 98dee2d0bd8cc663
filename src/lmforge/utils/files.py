"""Small file helpers shared by the data and ingest layers."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's bytes, read in 1 MiB chunks so large files never sit in memory."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
