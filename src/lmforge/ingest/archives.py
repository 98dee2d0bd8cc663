"""Unpacking zip and tar archives (tar.gz, tar.bz2, tar.xz) safely, member by member.

An archive from anywhere can be built to hurt whoever unpacks it, so each member is streamed to
disk in chunks (never read whole into memory) and checked:

* a name that is absolute or climbs out with `../` is refused (it would write outside the folder);
* symbolic and hard links are never created (one pointing out would let a later member, or the
  reader, reach any file on the machine); device nodes and FIFOs are never created either;
* one ArchiveBudget is shared by an archive and every archive nested in it: the bytes unpacked
  and the members counted add up across all levels, so nesting cannot reset them;
* each archive may unpack to at most `max_ratio` times its own size: a zip bomb (1 GB of zeros
  in 1 MB) is stopped after the first ratio x size bytes, long before the byte budget.

A member that breaks a rule is skipped and reported; a limit reached stops the archive (the
members unpacked before it are kept and read); a corrupt archive stops where it breaks.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MB = 1024 * 1024
CHUNK_BYTES = MB
# An archive may always unpack to max_ratio x this, however small: a 300-byte zip of a page of
# repeated text is not a bomb.
MIN_COUNTED_ARCHIVE_BYTES = MB


@dataclass(frozen=True)
class ArchiveLimits:
    """The archive limits of IngestConfig (0 = no limit); see its help texts."""

    max_bytes: int = 20_000 * MB
    max_ratio: float = 100
    max_members: int = 100_000
    max_depth: int = 3

    @classmethod
    def from_config(cls, cfg) -> ArchiveLimits:
        return cls(max_bytes=int(cfg.max_archive_mb * MB), max_ratio=cfg.max_archive_ratio,
                   max_members=cfg.max_archive_members, max_depth=cfg.max_archive_depth)


class ArchiveLimitReached(Exception):
    """Unpacking stopped at a limit; str(exc) says which (the members before it are kept)."""


class ArchiveBudget:
    """Bytes and members left to one top-level archive and all the archives nested inside it."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.bytes_used = 0
        self.members_used = 0

    def take_member(self) -> None:
        self.members_used += 1
        if self.limits.max_members and self.members_used > self.limits.max_members:
            raise ArchiveLimitReached(f"stopped after {self.limits.max_members:,} members (ingest.max_archive_members, "
                                      "nested archives counted together)")

    def take_bytes(self, count: int) -> None:
        self.bytes_used += count
        if self.limits.max_bytes and self.bytes_used > self.limits.max_bytes:
            raise ArchiveLimitReached(f"stopped after unpacking {self.limits.max_bytes / MB:,.0f} MB "
                                      "(ingest.max_archive_mb, nested archives counted together)")


@dataclass
class Member:
    """One entry of a zip or tar archive, whatever the format."""

    name: str
    kind: str                   # "file", "directory", "symbolic link", "hard link", "FIFO", "device", "other"
    link: str = ""              # where a link points
    open: Callable[[], BinaryIO] | None = None  # a file's contents, streamed


def extract(path: Path, target: Path, budget: ArchiveBudget) -> Iterator[tuple[str, str]]:
    """Unpack the archive at `path` into `target`; yields (member name, reason) for each member skipped.

    Raises ArchiveLimitReached at a limit, and whatever the zip/tar/compression modules raise for a
    corrupt archive; members unpacked until then stay in `target`.
    """
    target = target.resolve()
    allowed = budget.limits.max_ratio * max(path.stat().st_size, MIN_COUNTED_ARCHIVE_BYTES)
    unpacked = 0
    for member in _members(path):
        budget.take_member()
        reason = _refusal(member, target)
        if reason:
            yield member.name, reason
        elif member.kind == "file":
            unpacked = _copy(member, target / member.name, budget, unpacked, allowed)


def _refusal(member: Member, target: Path) -> str | None:
    """Why this member is not unpacked (None: it is a safe regular file, or a folder)."""
    if member.kind == "directory":
        return None  # folders come with the files in them
    if not _stays_inside(member.name, target):
        return "its path leads outside the archive (absolute, or ../): refused"
    if member.kind in ("symbolic link", "hard link"):
        where = "outside the archive" if not _stays_inside(_link_target(member), target) else "inside the archive"
        return f"{member.kind} to {member.link!r}, pointing {where}: links are never followed"
    if member.kind != "file":
        return f"a {member.kind}, not a regular file: never created"
    return None


def _stays_inside(name: str, target: Path) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    windows_drive = len(parts[0]) == 2 and parts[0][1] == ":" if parts else False  # C:
    if not parts or name.startswith(("/", "\\")) or ".." in parts or windows_drive:
        return False
    return (target / name).resolve().is_relative_to(target)


def _link_target(member: Member) -> str:
    """The link's target as a path inside the archive (a symbolic link is relative to its own folder)."""
    if member.kind == "hard link" or member.link.startswith("/"):
        return member.link
    return str(PurePosixPath(member.name).parent / member.link)


def _copy(member: Member, destination: Path, budget: ArchiveBudget, unpacked: int, allowed: float) -> int:
    """Stream one member to `destination` under the limits; returns the archive's bytes unpacked so far."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with member.open() as source, open(destination, "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                unpacked += len(chunk)
                if budget.limits.max_ratio and unpacked > allowed:
                    raise ArchiveLimitReached(
                        f"stopped: it unpacks to more than {budget.limits.max_ratio:g} times its size "
                        "(ingest.max_archive_ratio; a zip bomb?)")
                budget.take_bytes(len(chunk))
                out.write(chunk)
    except BaseException:
        destination.unlink(missing_ok=True)  # never leave half a member to be read
        raise
    return unpacked


def _members(path: Path) -> Iterator[Member]:
    if zipfile.is_zipfile(path):
        yield from _zip_members(path)
    else:
        yield from _tar_members(path)


def _zip_members(path: Path) -> Iterator[Member]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            unix_mode = info.external_attr >> 16  # zip tools on Unix store the file type here
            if info.is_dir():
                yield Member(info.filename, "directory")
            elif stat.S_ISLNK(unix_mode):
                yield Member(info.filename, "symbolic link", link=_zip_link(archive, info))
            elif stat.S_IFMT(unix_mode) and not stat.S_ISREG(unix_mode):  # no type bits: a plain file
                yield Member(info.filename, _kind_of_mode(unix_mode))
            else:
                yield Member(info.filename, "file", open=lambda info=info: archive.open(info))


def _zip_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    with archive.open(info) as link:  # a zip symlink's contents are its target; a bomb's would be long
        return link.read(1000).decode(errors="replace")


def _tar_members(path: Path) -> Iterator[Member]:
    with tarfile.open(path) as archive:  # any compression tarfile knows: gz, bz2, xz
        for info in archive:
            if info.isfile():
                yield Member(info.name, "file", open=lambda info=info: archive.extractfile(info))
            elif info.isdir():
                yield Member(info.name, "directory")
            elif info.issym() or info.islnk():
                yield Member(info.name, "symbolic link" if info.issym() else "hard link", link=info.linkname)
            elif info.isfifo():
                yield Member(info.name, "FIFO")
            elif info.ischr() or info.isblk():
                yield Member(info.name, "device")
            else:
                yield Member(info.name, "other")


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"
