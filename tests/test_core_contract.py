"""The symbolic core's contract from the issue: the documented backprop list, its printed
forms, a verification that fails when a rule is wrong, and the CLI's exit codes."""

from __future__ import annotations

import pytest
import sympy as sp

import symnet as sn
from symnet.cli import main
from symnet.symbolic import fuse, printing, rules


def _derive(activation, reduction="sum"):
    model = sn.Sequential(sn.Linear(4, 8), activation, sn.Linear(8, 3))
    return sn.derive(model, sn.CrossEntropyLoss(reduction=reduction))


def test_documented_backward_list():
    d = _derive(sn.Sigmoid())
    names = [str(eq.lhs) for eq in d.backward]
    assert names == ["dZ2", "dW2", "db2", "dA1", "dZ1", "dW1", "db1"]
    rhs = {str(eq.lhs): eq.rhs for eq in d.backward}
    assert str(rhs["dW2"]) == "dZ2*A1.T"
    assert str(rhs["dA1"]) == "W2.T*dZ2"
    assert str(rhs["dW1"]) == "dZ1*X.T"
    assert str(rhs["db2"]) == "dZ2*1"
    assert [str(eq.lhs) for eq in d.forward] == ["Z1", "A1", "Z2", "Yhat", "L"]
    X = d.graph.inputs
    assert X.shape == (4, sp.Symbol("N", integer=True, positive=True))


@pytest.mark.parametrize("activation, text", [
    (sn.Sigmoid(), "dA1 ⊙ A1 ⊙ (1 − A1)"),
    (sn.Tanh(), "dA1 ⊙ (1 − A1²)"),
    (sn.ReLU(), "dA1 ⊙ (Z1 > 0)"),
])
def test_activation_derivative_in_its_documented_form(activation, text):
    d = _derive(activation)
    dZ1 = next(eq for eq in d.backward if str(eq.lhs) == "dZ1")
    assert printing.text(dZ1.rhs) == text


@pytest.mark.parametrize("reduction, text", [("sum", "Ŷ − Y"), ("mean", "(Ŷ − Y)/N")])
def test_softmax_cross_entropy_is_derived_to_yhat_minus_y(reduction, text):
    d = _derive(sn.Tanh(), reduction)
    assert printing.text(d.backward[0].rhs) == text
    assert d.verify()


def test_verify_names_the_equation_a_wrong_activation_rule_breaks(monkeypatch):
    a = sp.Symbol("_a", real=True)
    real = rules.derivative

    def planted(f, x):
        value, in_output = real(f, x)
        return (a * (1 + a), True) if in_output and value == a * (1 - a) else (value, in_output)

    monkeypatch.setattr(rules, "derivative", planted)
    report = _derive(sn.Sigmoid()).verify()
    assert not report
    assert "dZ1" in report.failed and "dZ2" not in report.failed


def test_verify_catches_a_missing_mean_scale(monkeypatch):
    real = fuse.fuse

    def planted(backward, one_hot):
        eqs = real(backward, one_hot)
        first = eqs[0]
        body = first.rhs.body
        wrong = sp.Lambda(body.variables, body.expr * sp.Symbol("N", integer=True,
                                                                 positive=True))
        eqs[0] = sp.Eq(first.lhs, type(first.rhs)(wrong, *first.rhs.operands), evaluate=False)
        return eqs

    monkeypatch.setattr("symnet.symbolic.backprop.fuse", planted)
    report = _derive(sn.Tanh(), "mean").verify()
    assert not report and report.failed[0] == "dZ2"


def test_user_activation_and_loss_verify_and_gradcheck():
    x, p, y = sp.symbols("x p y")
    mish = sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)
    logcosh = sn.Loss("logcosh", sp.log(sp.cosh(p - y)), p, y)
    d = sn.derive(sn.Sequential(sn.Linear(2, 2), mish, sn.Linear(2, 2)), logcosh)
    assert d.verify() and d.gradcheck()


def test_latex_and_mermaid():
    d = _derive(sn.Sigmoid(), "mean")
    latex = d.latex()
    assert latex.startswith(r"\begin{aligned}") and r"\odot" in latex
    assert latex.count("{") == latex.count("}")
    mermaid = d.mermaid()
    assert mermaid.startswith("flowchart TD")
    for edge in ("X --> Z1", "Z1 --> A1", "A1 --> Z2", "Z2 --> Yhat", "Yhat --> Loss",
                 "Loss --> dZ2", "dZ2 --> dW2", "dZ2 --> db2", "dZ2 --> dA1", "dA1 --> dZ1",
                 "dZ1 --> dW1", "dZ1 --> db1"):
        assert edge in mermaid


def test_cli_equations_and_verify(capsys):
    assert main(["equations", "--layers", "784,128,10", "--activation", "relu"]) == 0
    out = capsys.readouterr().out
    assert "dZ1 = dA1 ⊙ (Z1 > 0)" in out and "dW2 = dZ2·A1ᵀ" in out
    assert main(["equations", "--layers", "4,3,2", "--optimizer", "sgd"]) == 0
    assert "W1 ← W1 − η·dW1" in capsys.readouterr().out
    assert main(["verify", "--layers", "3,2,2", "--activation", "tanh", "--loss", "mse"]) == 0


@pytest.mark.parametrize("argv", [
    ["equations", "--layers", "784,128,10", "--activation", "swish9"],
    ["equations", "--layers", "784,0,10"],
    ["equations", "--layers", "784,,10"],
    ["verify", "--layers", "7"],
])
def test_cli_bad_arguments(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symnet: error:") and "\n" not in err
