"""The repository is self-contained: no tracked text file names a machine's absolute path or a folder
outside the repository (tests, benchmarks and docs read testdata/ or data they write themselves).

System program paths (under usr/ or etc/ at the root) are fine: they name no one's files.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each pattern (and its name) is written so that this file's own source does not match it.
FORBIDDEN = {
    "a path under the work folder": re.compile(r"(?<![\w.~-])/wor[k]/"),
    "a path under the farm folder": re.compile(r"(?<![\w.~-])/far[m]/"),
    "a Linux home folder": re.compile(r"(?<![\w.~-])/hom[e]/[\w.-]+/"),
    "a macOS home folder": re.compile(r"(?<![\w.~-])/User[s]/[\w.-]+/"),
    "root's home folder": re.compile(r"(?<![\w.~-])/roo[t]/"),
    "a Windows home folder": re.compile(r"\b[A-Za-z]:(?:\\\\|\\|/)User[s]\b"),
    "a shared folder next to the repository": re.compile(r"\.\./share[d]\b"),
    "the shared datasets folder": re.compile(r"""share[d]/datasets|["']share[d]["']\s*/\s*["']datasets["']"""),
}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (e.g. an unpacked sdist): there is no list of tracked files to check")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode("utf-8").split("\0") if name]


def offending_lines(text: str) -> list[tuple[int, str, str]]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                found.append((number, what, line.strip()[:160]))
    return found


def test_no_tracked_file_names_a_path_outside_the_repository():
    problems = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree but still in the index
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (images, PDFs): not text anyone reads paths from
            continue
        problems += [f"{name}:{number}: {what}: {line}"
                     for number, what, line in offending_lines(data.decode("utf-8", errors="replace"))]
    assert not problems, ("tracked files name paths outside the repository; use testdata/ or a path "
                          "relative to the repository instead:\n" + "\n".join(problems))


def joined(*parts: str) -> str:
    """A path made of pieces, so that this file's own text names none of the paths it tests with."""
    return "/".join(parts)


@pytest.mark.parametrize("line", [
    f'SAMPLES = Path("{joined("", "wor" + "k", "shared", "data", "x")}")',
    f"open('{joined('', 'hom' + 'e', 'alice', 'notes.txt')}')",
    joined("", "User" + "s", "bob", "data"),
    joined("", "roo" + "t", ".cache", "x"),
    "see " + joined("..", "share" + "d", "data"),
    'parents[2] / "share' 'd" / "datasets"',
    "C:" + "\\" + "User" + "s" + "\\" + "carol",
])
def test_the_patterns_catch_machine_paths(line):
    assert offending_lines(line)


@pytest.mark.parametrize("line", [
    "chromium = " + joined("", "usr", "bin", "chromium"),
    "see " + joined("", "etc", "os-release"),
    joined("", "usr", "sha" + "re", "doc", "python3.11", "html", ""),
    "https:" + joined("", "", "example.org", "wor" + "k", "report"),
    "testdata/sample-docs/csv/iris.csv",
    "datasets shared by nodes",
    joined("~", "wor" + "k", "notes") + " is the user's own",
])
def test_system_paths_and_repository_paths_pass(line):
    assert not offending_lines(line)
