"""Lower layers never import higher ones (see docs/ARCHITECTURE.md); checked by parsing imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lmforge"
LAYER = {"utils": 0, "model": 1, "tokenizer": 1, "ingest": 1, "data": 2, "adapt": 2, "distributed": 2, "generate": 3, "train": 3, "eval": 3, "config": 4, "export": 4, "cli": 5}
# Within a layer some packages may use each other; these are the allowed same-layer edges.
ALLOWED_SAME_LAYER = {("train", "generate"), ("eval", "generate"), ("eval", "train")}


def imported_packages(path: Path) -> set[str]:
    """Top-level lmforge packages that the module at `path` imports (relative imports resolved)."""
    package_parts = path.relative_to(PACKAGE).parts[:-1]  # e.g. ("ingest", "readers")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package_parts[: len(package_parts) - (node.level - 1)]
            parts = list(base) + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmforge."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lmforge."))
    return found


@pytest.mark.parametrize("package", sorted(LAYER))
def test_package_imports_only_lower_layers(package):
    for path in (PACKAGE / package).rglob("*.py"):
        for other in imported_packages(path) - {package}:
            assert other in LAYER, f"{path}: unknown package {other}"
            ok = LAYER[other] < LAYER[package] or (package, other) in ALLOWED_SAME_LAYER
            assert ok, f"{path.relative_to(PACKAGE)} imports lmforge.{other}, a higher or same layer"
