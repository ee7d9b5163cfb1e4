"""The ``symnet`` command (symnet.cli): output, exit statuses, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from symnet import rules
from symnet.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> int:
    """``main``'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_equations_text(capsys):
    assert run(["equations", "--layers", "4,3,2", "--activation", "sigmoid",
                "--loss", "cross-entropy"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0] == "Forward" and "Backward" in lines
    for expected in ["Z1 = W1·X + b1·1ᵀ", "A1 = σ(Z1)", "Ŷ = softmax(Z2)", "dZ2 = (Ŷ − Y)/N",
                     "dW2 = dZ2·A1ᵀ", "dA1 = W2ᵀ·dZ2", "dZ1 = dA1 ⊙ A1 ⊙ (1 − A1)",
                     "dW1 = dZ1·Xᵀ"]:
        assert expected in lines


def test_equations_sum_reduction(capsys):
    assert run(["equations", "--layers", "4,3,2", "--reduction", "sum"]) == 0
    assert "dZ2 = Ŷ − Y" in capsys.readouterr().out


def test_equations_latex_with_adam(capsys):
    assert run(["equations", "--layers", "4,3,2", "--activation", "tanh", "--optimizer", "adam",
                "--format", "latex"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(r"\begin{aligned}") and out.endswith(r"\end{aligned}")
    assert r"\odot" in out and r"\leftarrow" in out and r"\hat{m}" in out
    assert out.count("{") == out.count("}")


def test_equations_mermaid(capsys):
    assert run(["equations", "--layers", "4,3,2", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD")
    assert "dZ2 --> dW2" in out and "dA1 --> dZ1" in out


@pytest.mark.parametrize("optimizer, line", [
    ("sgd", "W1 ← W1 − η·dW1"), ("adam", "mW1 ← β₁·mW1 + (1 − β₁)·dW1"),
    ("adamw", "v̂W2 = vW2/(1 − β₂ᵗ)"),
])
def test_equations_with_optimizer(capsys, optimizer, line):
    assert run(["equations", "--layers", "3,2,2", "--optimizer", optimizer]) == 0
    assert line in capsys.readouterr().out


def test_verify_succeeds(capsys):
    assert run(["verify", "--layers", "3,2,2", "--activation", "relu", "--loss", "mse",
                "--numeric"]) == 0
    out = capsys.readouterr().out
    assert "symbolic verification: all hold" in out
    assert "central differences: all hold" in out


def test_verify_fails_with_status_1(capsys, monkeypatch):
    honest = rules.derivative
    a = sp.Symbol("_a", real=True)

    def wrong(f, x):
        fprime, in_output = honest(f, x)
        return (a * (1 + a), True) if in_output else (fprime, in_output)

    monkeypatch.setattr(rules, "derivative", wrong)
    assert run(["verify", "--layers", "3,2,2", "--activation", "sigmoid"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: dZ1, dW1, db1" in out


@pytest.mark.parametrize("argv, mentions", [
    (["equations", "--layers", "4,3,2", "--activation", "swish"], "unknown activation 'swish'"),
    (["equations", "--layers", "4,0,2"], "width of 0"),
    (["equations", "--layers", "784,,10"], "784,,10"),
    (["equations", "--layers", "784"], "--layers"),
    (["equations", "--layers", "4,x,2"], "--layers"),
    (["equations", "--layers", "4,3,2", "--format", "html"], "--format"),
    (["equations", "--layers", "4,3,2", "--loss", "hinge"], "unknown loss 'hinge'"),
    (["equations", "--layers", "4,3,2", "--optimizer", "rmsprop"], "--optimizer"),
    (["equations", "--layers", "4,3,1", "--loss", "cross-entropy"], "at least 2 classes"),
    (["verify", "--layers", "4,3,2", "--reduction", "none"], "--reduction"),
    (["equations"], "--layers"),
    (["fly"], "invalid choice"),
    ([], "command"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, mentions):
    assert run(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("symnet: error: ") and mentions in lines[0]


def test_help_exits_0(capsys):
    assert run(["equations", "--help"]) == 0
    assert "--layers" in capsys.readouterr().out


def _module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "symnet", *args], capture_output=True,
                          text=True, encoding="utf-8", cwd=ROOT, env=env, timeout=120)


def test_module_entry_point():
    done = _module("equations", "--layers", "4,3,2", "--activation", "relu")
    assert done.returncode == 0, done.stderr
    assert "dZ1 = dA1 ⊙ (Z1 > 0)" in done.stdout
    bad = _module("equations", "--layers", "784,,10")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
