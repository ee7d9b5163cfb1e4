"""The package is laid out as its pipeline.  `lint-imports` (run by ``make test``) checks that
each stage imports only the stages before it; this adds what its contracts cannot say: no
stage but the application imports the package root, which imports every stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import symnet

ROOT = Path(symnet.__file__).parent
STAGES = ("nn", "symbolic", "optim", "backends", "io")


def _imports_the_root(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "symnet" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "symnet":
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", [p for stage in STAGES for p in sorted((ROOT / stage).rglob(
    "*.py"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_stage_imports_the_package_root(path):
    assert _imports_the_root(path) == [], f"{path} imports symnet itself"


def test_the_check_finds_a_root_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import symnet\n    from symnet import optim\n")
    assert _imports_the_root(bad) == [2, 3]
