"""Hostile files against `lmforge ingest`: does every bad file fail alone, quickly, in bounded memory?

    python bench/hostile_ingest.py [--src DIR] [--timeout 600] [--workers 2] [--without NAME ...]
                                   [--keep DIR] [--out FILE.json]

Builds a folder in a temporary directory and runs `python -m lmforge.cli.main ingest` on it in a
subprocess (with PYTHONPATH=--src, so the same script measures another checkout, e.g. a `git
worktree` of an older commit). The folder holds a handful of ordinary files and:

* a zip bomb: one member of 1 GiB of zeros, deflated to about 1 MB;
* archives nested 8 deep (zip, tar.gz, tar.bz2, tar.xz, tar in turn), a text file in the innermost;
* a tar with a character device, a FIFO, a symlink and a hard link pointing out, and a `../` member
  (built from tarfile.TarInfo headers: no root needed), next to one ordinary member;
* an HTML page of 150,000 repeated `<title>` tags;
* an SQL dump whose first INSERT opens a quote that never closes, followed by 30,000 lines;
* JSON nested 200,000 deep;
* a PNG whose header claims 60000 x 60000 pixels;
* a 3,000-page PDF with no text layer;
* a FIFO (opening it for reading would block forever);
* a text file that is one 64 MiB line.

Measured: wall time, exit code, the peak resident memory of the largest single process (VmHWM of
every process of the tree, polled every 0.2 s; getrusage(RUSAGE_CHILDREN) after the end is shown
too, though it also counts this script's memory copied into the child before exec) and of the
whole tree at once (sampled). Checked: each ordinary file's text is in documents.jsonl
(or its file is "ok" with documents), and each hostile file appears in ingest_report.json, with
a reason where it was cut, skipped or failed. Done when: under 5 minutes on 2 cores, exit 0, no
process above 3 GB. `--without pipe.txt` leaves a file out (an ingest that blocks on the FIFO
shows nothing about the others).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the builders shared with the tests
from tests.ingest.hostile_files import blank_pdf, png_header, tar_bytes, zip_bytes  # noqa: E402
SAMPLE_DOCS = REPO / "testdata" / "sample-docs"
MIB = 1 << 20
RSS_LIMIT_MB = 3 * 1024
WALL_LIMIT_S = 300

NOTES = "The harbour master logged every arrival by hand for forty years, in ink that never faded."
GUIDE = "Kelp forests grow up to half a metre a day in cold, nutrient rich coastal water."
TAR_MEMBER = "The tide tables were corrected in spring after the storm moved the sandbar east."
DEEP = "This sentence sits at the bottom of eight nested archives."

# Copied from testdata/sample-docs: (path there, kept under this name).
COPIED = ["html/python-tutorial-introduction.html", "pdf/google-doc-document.pdf", "ocr/phototest.png"]


# ---- building the folder -------------------------------------------------------------------------
def zip_bomb(path: Path, gib: int = 1) -> None:
    """One member of `gib` GiB of zeros, deflated (deflate tops out near 1000:1, so about 1 MB)."""
    chunk = bytes(MIB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.txt", "w", force_zip64=True) as member:
            for _ in range(gib * 1024):
                member.write(chunk)


def nested_archives(path: Path, depth: int = 8) -> None:
    """An archive inside an archive ... `depth` deep, the text file in the innermost one."""
    kinds = [("zip", None), ("tar.gz", "w:gz"), ("tar.bz2", "w:bz2"), ("tar.xz", "w:xz"), ("tar", "w")]
    name, data = "deep.txt", DEEP.encode()
    for level in range(depth, 0, -1):
        suffix, mode = kinds[level % len(kinds)]
        data = zip_bytes({name: data}) if mode is None else tar_bytes({name: data}, mode)
        name = f"level{level}.{suffix}"
    path.write_bytes(data)


def evil_tar(path: Path) -> None:
    """An ordinary member, plus a device node, a FIFO, links pointing out and a ../ member."""
    with tarfile.open(path, "w") as archive:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("ok.txt", data=TAR_MEMBER.encode())
        add("dev/zero", tarfile.CHRTYPE, devmajor=1, devminor=5)
        add("dev/fifo", tarfile.FIFOTYPE)
        add("passwd-link", tarfile.SYMTYPE, linkname="../../../../../etc/passwd")
        add("shadow-link", tarfile.LNKTYPE, linkname="/etc/shadow")
        add("../escaped.txt", data=b"This member tries to land outside the extraction folder.")


def one_line(path: Path, size: int) -> None:
    """`size` bytes of words with no line break."""
    words = b"the quick brown fox jumps over the lazy dog while seven wizards quietly box "
    with open(path, "wb") as f:
        f.write(words * (size // len(words)) + b"x" * (size % len(words)))


def build(folder: Path, without: set[str]) -> dict[str, str]:
    """Write the hostile folder; returns {file name: what it is} for the hostile files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(NOTES + "\n" + "The ledgers now fill three shelves of the museum.\n")
    (folder / "guide.md").write_text(f"# Kelp\n\n{GUIDE}\nSea otters keep the urchins that eat kelp in check.\n")
    for relative in COPIED:
        shutil.copy(SAMPLE_DOCS / relative, folder / Path(relative).name)
    hostile = {
        "zipbomb.zip": "1 GiB of zeros deflated to ~1 MB",
        "nested8.zip": "archives nested 8 deep",
        "evil.tar": "tar with a device, a FIFO, links out and a ../ member",
        "titles.html": "150,000 repeated <title> tags",
        "dump.sql": "an unclosed quote over 30,000 lines",
        "deep.json": "JSON nested 200,000 deep",
        "huge.png": "PNG header claiming 60000 x 60000 pixels",
        "blank.pdf": "3,000 pages, no text layer",
        "pipe.txt": "a FIFO",
        "oneline.txt": "one 64 MiB line",
    }
    zip_bomb(folder / "zipbomb.zip")
    nested_archives(folder / "nested8.zip")
    evil_tar(folder / "evil.tar")
    (folder / "titles.html").write_text("<html><head>" + "<title>" * 150_000 + "</head></html>")
    lines = [f"line {i} of a value that never ends, all one string now\n" for i in range(30_000)]
    (folder / "dump.sql").write_text("INSERT INTO notes VALUES (1, 'this quote is never closed\n" + "".join(lines))
    (folder / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (folder / "huge.png").write_bytes(png_header(60_000, 60_000))
    blank_pdf(folder / "blank.pdf", 3000)
    os.mkfifo(folder / "pipe.txt")
    one_line(folder / "oneline.txt", 64 * MIB)
    for name in without:
        (folder / name).unlink()
        del hostile[name]
    return hostile


# ---- measuring the run ---------------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name (field 2) may hold spaces: the parent pid is the 2nd field after ')'.
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryPoller(threading.Thread):
    """Peak VmHWM of any single process in the tree, and the peak sum of VmRSS over the tree."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stopped = root, threading.Event()
        self.max_process_kb = self.max_tree_kb = self.max_processes = 0

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            pids = _descendants(self.root)
            self.max_processes = max(self.max_processes, len(pids))
            self.max_process_kb = max([self.max_process_kb] + [_status_kb(p, "VmHWM") for p in pids])
            self.max_tree_kb = max(self.max_tree_kb, sum(_status_kb(p, "VmRSS") for p in pids))


def run_ingest(folder: Path, out: Path, cache: Path, src: Path, workers: int, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "lmforge.cli.main", "ingest", str(folder), "--out", str(out),
               "--workers", str(workers), f"--ingest.cache_dir={cache}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    poller = MemoryPoller(process.pid)
    poller.start()
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the workers and tesseract go too
        output, _ = process.communicate()
        code = None
    wall = time.perf_counter() - start
    poller.stopped.set()
    poller.join()
    # ru_maxrss also counts what the forked child held of this process before exec (the test files
    # built here), so it overstates the ingest's peak; it does see processes too short for the poller.
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"command": " ".join(command), "wall_s": round(wall, 1), "exit_code": code, "timed_out": code is None,
            "peak_process_mb": round(poller.max_process_kb / 1024), "children_maxrss_mb": round(children_kb / 1024),
            "peak_tree_mb": round(poller.max_tree_kb / 1024), "max_processes": poller.max_processes,
            "output_tail": output.decode(errors="replace")[-3000:]}


# ---- checking the report -------------------------------------------------------------------------
def _why(entry: dict) -> str:
    if entry["status"] != "ok":
        return f"{entry['status']}: {entry['reason']}"
    return "ok" + (f"; {'; '.join(entry['problems'])}" if entry.get("problems") else "")


def check(folder: Path, out: Path, hostile: dict[str, str]) -> dict:
    report_path, documents_path = out / "ingest_report.json", out / "documents.jsonl"
    if not report_path.is_file():
        return {"report": False}
    files = json.loads(report_path.read_text())["files"]
    text = documents_path.read_text() if documents_path.is_file() else ""
    by_name: dict[str, list[dict]] = {}
    for entry in files:
        name = entry["source"].replace(str(folder) + "/", "").split("::")[0]
        by_name.setdefault(name, []).append(entry)
    ordinary = {}
    for name, sentence in [("notes.txt", NOTES), ("guide.md", GUIDE), ("evil.tar", TAR_MEMBER)]:
        ordinary[name if name != "evil.tar" else "evil.tar::ok.txt"] = sentence in text
    for relative in COPIED:
        name = Path(relative).name
        ordinary[name] = any(e["status"] == "ok" and e["documents_kept"] > 0 for e in by_name.get(name, []))
    reported = {}
    for name, what in hostile.items():
        entries = by_name.get(name, [])
        reasons = [f"{e['source'].replace(str(folder) + '/', '')}: {_why(e)}" for e in entries
                   if e["status"] != "ok" or e.get("problems")]
        reported[name] = {"what": what, "in_report": bool(entries), "reasons": reasons}
    return {"report": True, "ordinary_kept": ordinary, "hostile": reported}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the lmforge source folder to measure")
    parser.add_argument("--timeout", type=float, default=600, help="kill the ingest after this many seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--without", action="append", default=[], metavar="NAME",
                        help="leave this hostile file out (e.g. pipe.txt), repeatable")
    parser.add_argument("--keep", type=Path, help="build (and keep) the folder here instead of a temporary one")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hostile-ingest-") as tmp:
        work = args.keep or Path(tmp)
        folder = work / "hostile"
        started = time.perf_counter()
        hostile = build(folder, set(args.without))
        print(f"built {folder} in {time.perf_counter() - started:.1f} s; running the ingest "
              f"(timeout {args.timeout:.0f} s)...", flush=True)
        run = run_ingest(folder, work / "out", work / "cache", args.src, args.workers, args.timeout)
        checks = check(folder, work / "out", hostile)
    results = {**run, **checks}
    print(run["output_tail"])
    print(f"command: {run['command']}")
    print(f"wall {run['wall_s']} s, exit code {run['exit_code']}{' (timed out: killed)' if run['timed_out'] else ''}, "
          f"peak RSS of one process {run['peak_process_mb']} MB (getrusage of children: {run['children_maxrss_mb']} MB), "
          f"of the whole tree {run['peak_tree_mb']} MB, "
          f"up to {run['max_processes']} processes")
    for name, kept in checks.get("ordinary_kept", {}).items():
        print(f"  ordinary {name:<36} {'kept' if kept else 'MISSING'}")
    for name, found in checks.get("hostile", {}).items():
        print(f"  hostile  {name:<14} ({found['what']}): {'in report' if found['in_report'] else 'NOT IN REPORT'}")
        for reason in found["reasons"]:
            print(f"      {reason[:300]}")
    done = (run["exit_code"] == 0 and run["wall_s"] < WALL_LIMIT_S and run["peak_process_mb"] < RSS_LIMIT_MB
            and all(checks.get("ordinary_kept", {"": False}).values())
            and all(h["in_report"] for h in checks.get("hostile", {"": {"in_report": False}}).values()))
    results["done"] = done
    print(f"done-when (under {WALL_LIMIT_S} s, exit 0, no process over {RSS_LIMIT_MB} MB, ordinary text kept, "
          f"every hostile file reported): {'MET' if done else 'NOT MET'}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
