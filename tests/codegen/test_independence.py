"""codegen knows equations and arrays, not networks: it never imports symnet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import codegen

FILES = sorted(Path(codegen.__file__).parent.rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):  # every level: functions and branches too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", "")) in ("import_module", "__import__"):
            names += [arg.value for arg in node.args if isinstance(arg, ast.Constant)
                      and isinstance(arg.value, str)]
    return names


def test_codegen_has_files():
    assert {"expr.py", "layout.py", "ir.py", "lower.py", "printer.py", "source.py", "cpu.py",
            "cuda.py", "cache.py", "files.py"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_codegen_never_imports_symnet(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [m for m in _imported_modules(tree) if m == "symnet" or m.startswith("symnet.")]
    assert not offending, f"{path.name} imports {offending}"


def test_the_check_sees_nested_and_dynamic_imports():
    tree = ast.parse("def f():\n    if x:\n        from symnet.symbolic.graph import N\n"
                     "    import symnet as sn\n"
                     "    importlib.import_module('symnet.backends.cpu')\n")
    assert sorted(_imported_modules(tree)) == ["symnet", "symnet.backends.cpu",
                                               "symnet.symbolic.graph"]
