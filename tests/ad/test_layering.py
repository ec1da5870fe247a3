"""nnflow.ad knows arrays only: it must not import layers, optim or train."""

from __future__ import annotations

import ast
from pathlib import Path

import nnflow.ad

FORBIDDEN = ("layers", "optim", "train", "losses", "functional", "data")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def test_ad_imports_nothing_above_it():
    root = Path(nnflow.ad.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for name in _imports(path):
            parts = name.lstrip(".").split(".")
            if "nnflow" in parts or name.startswith(".."):
                if any(part in FORBIDDEN for part in parts):
                    offenders.append(f"{path.relative_to(root)}: {name}")
    assert not offenders, f"nnflow.ad imports higher layers: {offenders}"
    assert len(list(root.rglob("*.py"))) > 5  # the walk found the package
