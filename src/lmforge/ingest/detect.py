"""What kind of file is this? By extension first, then by the bytes it starts with.

Extensions are trusted for text formats (a .py file is code); binary formats are recognised by
their magic bytes even when misnamed. A file nobody recognises is read as plain text only if it
looks like text (no NUL bytes, decodes), otherwise it is skipped as binary.
"""

from __future__ import annotations

from pathlib import Path

# Source code by extension -> language (recorded in the Record's meta).
CODE_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".ipynb": "jupyter", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".java": "java",
    ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala", ".groovy": "groovy", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".cs": "csharp", ".go": "go",
    ".rs": "rust", ".swift": "swift", ".m": "objective-c", ".mm": "objective-c", ".rb": "ruby", ".php": "php",
    ".pl": "perl", ".pm": "perl", ".lua": "lua", ".r": "r", ".jl": "julia", ".hs": "haskell", ".ml": "ocaml",
    ".mli": "ocaml", ".fs": "fsharp", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure",
    ".lisp": "lisp", ".el": "emacs-lisp", ".scm": "scheme", ".dart": "dart", ".zig": "zig", ".nim": "nim",
    ".v": "verilog", ".sv": "systemverilog", ".vhd": "vhdl", ".f90": "fortran", ".f": "fortran",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell",
    ".bat": "batch", ".cmd": "batch", ".css": "css", ".scss": "scss", ".less": "less", ".vue": "vue",
    ".svelte": "svelte", ".tex": "latex", ".cmake": "cmake", ".mk": "make", ".proto": "protobuf",
    ".graphql": "graphql", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".ini": "ini", ".cfg": "ini",
    ".xml": "xml", ".asm": "assembly", ".s": "assembly", ".sol": "solidity", ".tf": "terraform",
}
CODE_FILENAMES = {"Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake",
                  "Rakefile": "ruby", "Gemfile": "ruby", "Jenkinsfile": "groovy"}

EXTENSION_FORMATS = {
    ".txt": "text", ".text": "text", ".rst": "text", ".org": "text", ".log": "text",
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".pdf": "pdf",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image",
    ".bmp": "image", ".gif": "image", ".webp": "image",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".csv": "csv", ".tsv": "csv", ".tab": "csv",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
    ".sql": "sql", ".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite",
    ".zip": "archive", ".tar": "archive", ".tgz": "archive", ".tar.gz": "archive", ".tar.bz2": "archive",
    ".tar.xz": "archive",
}

MAGIC = [
    (b"%PDF-", "pdf"), (b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"), (b"GIF8", "image"),
    (b"II*\x00", "image"), (b"MM\x00*", "image"), (b"SQLite format 3\x00", "sqlite"),
    (b"PK\x03\x04", "archive"), (b"\x1f\x8b", "archive"),
]
TEXT_FORMATS = {"text", "markdown", "code", "html", "csv", "json", "jsonl", "sql"}

# Directories that hold dependencies, build output or tool state rather than the user's documents.
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", "env", "site-packages",
             ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".idea", ".vscode",
             "bower_components", "vendor", "third_party", ".ipynb_checkpoints", ".lmforge_cache"}
# Machine-written files that teach a model nothing about the user's language or code.
SKIP_FILENAMES = {"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock",
                  "Pipfile.lock", "composer.lock", "Gemfile.lock", "go.sum", ".DS_Store", "Thumbs.db"}

HEAD_BYTES = 8192


def extension(path: Path) -> str:
    name = path.name.lower()
    for double in (".tar.gz", ".tar.bz2", ".tar.xz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def sniff(head: bytes) -> str | None:
    """The format the first bytes announce, "text" when they look like text, None for other binary."""
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            return fmt
    if looks_binary(head):
        return None
    return "text"


def looks_binary(head: bytes) -> bool:
    """NUL bytes never occur in text files (except UTF-16/32, which start with a BOM)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        return False
    return b"\x00" in head


def detect_format(path: Path, head: bytes) -> str | None:
    """"code", "pdf", "csv", ... or None when the file should be skipped as binary."""
    if path.name in CODE_FILENAMES:
        return "code"
    ext = extension(path)
    fmt = "code" if ext in CODE_LANGUAGES else EXTENSION_FORMATS.get(ext)
    sniffed = sniff(head)
    if fmt is None:
        return sniffed
    if fmt in TEXT_FORMATS and looks_binary(head):
        return None  # a .txt full of NUL bytes is not text, whatever its name says
    return fmt


def code_language(path: Path) -> str:
    return CODE_FILENAMES.get(path.name) or CODE_LANGUAGES.get(extension(path), "unknown")
