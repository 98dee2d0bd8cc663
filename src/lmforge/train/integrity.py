"""Is this checkpoint folder intact? A manifest written with it, and the checks resume runs before loading.

Every checkpoint folder gets a `manifest.json` listing its files with their sizes and CRC-32 checksums,
written last, just before the folder is renamed into place. Resuming recomputes them: a file cut
short (a full disk, a copy that stopped half-way), a file changed since (a bad sector, a stray edit)
or a missing file marks the folder damaged, and resume moves on to an older checkpoint instead of
crashing half-way through loading it (or, worse, loading garbage that happens to parse).

Folders written before manifests existed are checked by structure instead: the JSON files parse, the
safetensors header matches the file's length, and train_state.pt loads.

CRC-32 detects accidents, not tampering; a checkpoint from a stranger is made safe by how it is loaded
(safetensors, `torch.load(weights_only=True)`), not by this file.
"""

from __future__ import annotations

import json
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import torch

MANIFEST = "manifest.json"
_CHUNK = 16 << 20  # read files in 16 MiB pieces: checksumming a large model needs no extra memory


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(folder: Path) -> None:
    """Record the size and checksum of every file in `folder` (call it when the folder is complete)."""
    files = {path.name: {"bytes": path.stat().st_size, "crc32": crc32_of(path)}
             for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")


def checkpoint_problem(folder: Path, required: tuple[str, ...]) -> str | None:
    """Why `folder` cannot be trusted (one short sentence), or None when it is intact.

    `required` names the files that must be present, e.g. ("config.json", "model.safetensors").
    The answer is cached per folder and file sizes/times, since several parts of a run ask the same.
    """
    folder = Path(folder)
    try:
        stats = [(path.name, path.stat()) for path in sorted(folder.iterdir())]
        signature = tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return _problem(str(folder), required, signature)


@lru_cache(maxsize=64)
def _problem(folder: str, required: tuple[str, ...], signature: tuple) -> str | None:
    path = Path(folder)
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    if (path / MANIFEST).is_file():
        return _manifest_problem(path)
    return _structure_problem(path)


def _manifest_problem(folder: Path) -> str | None:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, {expected['bytes']:,} were written"
        if crc32_of(path) != expected["crc32"]:
            return f"{name} changed after it was written (its checksum differs)"
    return None


def _structure_problem(folder: Path) -> str | None:
    """The checks possible without a manifest: every file parses as what it claims to be."""
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                _check_safetensors_length(path)
            elif path.name == "train_state.pt":
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any failure to parse is the answer, whatever the parser raised
            return f"{path.name} is damaged ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _check_safetensors_length(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes; the header's
    largest end offset must land exactly on the end of the file, or the file was cut short (or padded)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ValueError("the header runs past the end of the file")
        header = json.loads(file.read(header_len))
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise ValueError(f"{size:,} bytes, the header describes {8 + header_len + end:,}")
