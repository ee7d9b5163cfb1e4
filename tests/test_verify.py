"""Verification (symnet.symbolic.verify): proves right derivations, and catches wrong ones.

The proof compares each derived gradient with ``sympy.diff`` of the explicit scalar loss;
these tests check that it holds across activations × losses × reductions, and that it fails,
naming the right equations, when a rule is deliberately broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

import symnet as sn
from codegen.expr import Elementwise, Softmax, Total
from symnet.symbolic import backprop, rules
from symnet.symbolic.derivation import Derivation
from symnet.symbolic.graph import LOSS, Graph, N, ew
from symnet.symbolic.verify import Check, Report, _zero

x = sp.Symbol("x", real=True)
p, t = sp.symbols("p t", real=True)

ACTIVATIONS = {
    "relu": sn.ReLU, "sigmoid": sn.Sigmoid, "tanh": sn.Tanh,
    "leaky_relu": lambda: sn.LeakyReLU(0.1), "softplus": sn.Softplus, "silu": sn.SiLU,
    "gelu": sn.GELU,
    # user activations
    "mish": lambda: sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x),
    "cubic": lambda: sn.Activation("cubic", x**3 + x, x),
}
#: loss name → (loss class, module the model must end with)
LOSSES = {
    "mse": (sn.MSELoss, None), "cross_entropy": (sn.CrossEntropyLoss, None),
    "bce_with_logits": (sn.BCEWithLogitsLoss, None), "nll": (sn.NLLLoss, sn.LogSoftmax),
    "bce": (sn.BCELoss, sn.Sigmoid),
    "logcosh": (lambda reduction: sn.Loss("logcosh", sp.log(sp.cosh(p - t)), p, t,
                                          reduction=reduction), None),
}


def _derive(activation: str, loss: str, reduction: str):
    make_loss, tail = LOSSES[loss]
    mods = [sn.Linear(3, 4), ACTIVATIONS[activation](), sn.Linear(4, 3)]
    return sn.derive(sn.Sequential(*mods, *([tail()] if tail else [])), make_loss(reduction))


TABLE = (
    [(a, "cross_entropy", "mean") for a in ACTIVATIONS]
    + [(a, "mse", "sum") for a in ACTIVATIONS]
    + [("tanh", loss, "mean") for loss in LOSSES if loss != "cross_entropy"]
    + [("tanh", "cross_entropy", "sum"), ("tanh", "bce_with_logits", "sum"),
       ("relu", "nll", "sum"), ("relu", "logcosh", "sum")]
    + [("softplus", "nll", "mean")]  # exp(w·log(…)) spelled two ways once hung the proof
)


@pytest.mark.parametrize("activation, loss, reduction", TABLE)
def test_verify_holds(activation, loss, reduction):
    d = _derive(activation, loss, reduction)
    report = d.verify()
    assert report, str(report)
    assert report.checked == [eq.lhs.name for eq in d.backward]
    assert report.failed == []


def test_four_layers_verify():
    model = sn.Sequential(sn.Linear(2, 3), sn.ReLU(), sn.Linear(3, 3), sn.ReLU(),
                          sn.Linear(3, 3), sn.ReLU(), sn.Linear(3, 2))
    d = sn.derive(model, sn.CrossEntropyLoss())
    report = d.verify()
    assert report, str(report)
    assert len(report.checked) == 15


@pytest.mark.parametrize("activation", ["gelu", "sigmoid"])
def test_three_hidden_layers_verify(activation):
    model = sn.Sequential(sn.Linear(4, 3), ACTIVATIONS[activation](), sn.Linear(3, 3),
                          ACTIVATIONS[activation](), sn.Linear(3, 2))
    report = sn.derive(model, sn.CrossEntropyLoss()).verify()
    assert report, str(report)
    assert len(report.checked) == 11


def test_gradient_written_through_a_later_one_verifies():
    """``dZ1 = (W2ᵀ·dŶ) ⊙ (1 − A1²)`` skips ``dA1``: the proof must look through ``dA1``."""
    d = _derive("tanh", "mse", "sum")
    W2, dYhat = (next(s for eq in d.backward for s in eq.rhs.atoms(sp.MatrixSymbol)
                      if s.name == name) for name in ("W2", "dYhat"))
    k = next(k for k, eq in enumerate(d.backward) if eq.lhs.name == "dZ1")
    A1 = d.backward[k].rhs.operands[1]
    d.backward[k] = sp.Eq(d.backward[k].lhs, ew(lambda g, a: g * (1 - a**2), W2.T * dYhat, A1),
                          evaluate=False)
    report = d.verify()
    assert report, str(report)


def norm_block(over: str, drop_term: bool = False) -> Derivation:
    """Linear(3, 3) → normalisation without affine → tanh plus a residual path → Linear(3, 2)
    → softmax cross-entropy, its backward written by hand in the textbook's fused form.

    ``over="features"`` is LayerNorm (statistics of each sample: row sums ``1ᵀ·Z`` and
    broadcasts ``1·μ``), ``"samples"`` BatchNorm (each feature: ``Z·1`` and ``μ·1ᵀ``);
    ``drop_term`` forgets the ``H ⊙ mean(dH ⊙ H)`` term.  Verify it at ``size=3``: the
    mean's 1/3 is a constant of the equations, so the features must not shrink.
    """
    d, eps = 3, sp.Rational(1, 10**5)
    if over == "features":
        count, reduce, spread = d, (lambda M: sp.OneMatrix(1, d) * M), (
            lambda m: sp.OneMatrix(d, 1) * m)
    else:
        count, reduce, spread = N, (lambda M: M * sp.OneMatrix(N, 1)), (
            lambda m: m * sp.OneMatrix(1, N))
    X, Y = sp.MatrixSymbol("X", 3, N), sp.MatrixSymbol("Y", 2, N)
    W1, b1 = sp.MatrixSymbol("W1", d, 3), sp.MatrixSymbol("b1", d, 1)
    W2, b2 = sp.MatrixSymbol("W2", 2, d), sp.MatrixSymbol("b2", 2, 1)
    stat = reduce(sp.MatrixSymbol("_", d, N)).shape
    Z1, C, S, H, A1 = (sp.MatrixSymbol(n, d, N) for n in ("Z1", "C", "S", "H", "A1"))
    mu, v, R = (sp.MatrixSymbol(n, *stat) for n in ("mu", "v", "R"))
    Z2, P = sp.MatrixSymbol("Z2", 2, N), sp.MatrixSymbol("Yhat", 2, N)
    forward = [
        (Z1, W1 * X + b1 * sp.OneMatrix(1, N)),
        (mu, reduce(Z1) / count),
        (C, Z1 - spread(mu)),
        (S, ew(lambda c: c**2, C)),
        (v, reduce(S) / count),
        (R, ew(lambda u: 1 / sp.sqrt(u + eps), v)),
        (H, ew(lambda c, r: c * r, C, spread(R))),
        (A1, ew(lambda h, z: sp.tanh(h) + z, H, Z1)),
        (Z2, W2 * A1 + b2 * sp.OneMatrix(1, N)),
        (P, Softmax(Z2)),
        (LOSS, Total(ew(lambda p, t: -t * sp.log(p), P, Y)) / N),
    ]

    def grad(m):
        return sp.MatrixSymbol("d" + m.name, *m.shape)

    keep = 0 if drop_term else 1
    dZ1 = ew(lambda r, g, g_mean, h, gh_mean, residual: r * (g - g_mean - keep * h * gh_mean)
             + residual, spread(R), grad(H), spread(reduce(grad(H)) / count), H,
             spread(reduce(ew(lambda g, h: g * h, grad(H), H)) / count), grad(A1))
    backward = [
        (grad(Z2), ew(lambda p, t: (p - t) / N, P, Y)),
        (grad(W2), grad(Z2) * A1.T), (grad(b2), grad(Z2) * sp.OneMatrix(N, 1)),
        (grad(A1), W2.T * grad(Z2)),
        (grad(H), ew(lambda g, h: g * (1 - sp.tanh(h) ** 2), grad(A1), H)),
        (grad(Z1), dZ1),
        (grad(W1), grad(Z1) * X.T), (grad(b1), grad(Z1) * sp.OneMatrix(N, 1)),
    ]
    graph = Graph([sp.Eq(lhs, rhs, evaluate=False) for lhs, rhs in forward], X, Y,
                  sn.CrossEntropyLoss(), {"W1": "0.weight", "b1": "0.bias",
                                          "W2": "2.weight", "b2": "2.bias"}, "Z2")
    return Derivation(graph, [sp.Eq(lhs, rhs, evaluate=False) for lhs, rhs in backward], [])


@pytest.mark.parametrize("over", ["features", "samples"])
def test_normalisation_and_residual_verify(over):
    report = norm_block(over).verify(size=3)
    assert report, str(report)
    assert report.checked == ["dZ2", "dW2", "db2", "dA1", "dH", "dZ1", "dW1", "db1"]


@pytest.mark.parametrize("over, failed", [
    ("features", ["dZ1", "dW1", "db1"]),
    # the bias before a BatchNorm gets no gradient, and the missing term sums to zero
    # over the samples, so db1 still holds
    ("samples", ["dZ1", "dW1"]),
])
def test_normalisation_missing_a_term_is_caught(over, failed):
    report = norm_block(over, drop_term=True).verify(size=3)
    assert not report and report.failed == failed


@pytest.mark.parametrize("activation, loss, reduction", [
    ("tanh", "cross_entropy", "mean"), ("relu", "mse", "sum"), ("gelu", "bce", "mean"),
    ("mish", "nll", "sum"), ("sigmoid", "bce_with_logits", "sum"), ("tanh", "logcosh", "mean"),
])
def test_gradcheck_holds(activation, loss, reduction):
    report = _derive(activation, loss, reduction).gradcheck()
    assert report, str(report)
    assert report.checked == ["dW2", "db2", "dW1", "db1"]


# --- verification must be able to fail ------------------------------------------------------

_a = sp.Symbol("_a", real=True)


def test_wrong_sigmoid_derivative_is_caught(monkeypatch):
    sigmoid = sn.Sigmoid().expr
    honest = rules.derivative

    def wrong(f, var):
        if f == sigmoid.xreplace({x: var}):
            return _a * (1 + _a), True  # should be a·(1 − a)
        return honest(f, var)

    monkeypatch.setattr(rules, "derivative", wrong)
    d = _derive("sigmoid", "cross_entropy", "mean")
    assert "(1 + A1)" in str(d)
    report = d.verify()
    assert not report
    assert report.failed == ["dZ1", "dW1", "db1"]  # and the layers above it still hold
    assert "FAIL dZ1" in str(report)
    gradients = d.gradcheck()
    assert not gradients and gradients.failed == ["dW1", "db1"]


def test_error_too_small_for_the_random_point_is_caught_by_the_proof(monkeypatch):
    sigmoid = sn.Sigmoid().expr
    honest = rules.derivative
    tiny = sp.Rational(1, 10**15)

    def wrong(f, var):
        if f == sigmoid.xreplace({x: var}):
            return _a * (1 - _a) + tiny * _a, True
        return honest(f, var)

    monkeypatch.setattr(rules, "derivative", wrong)
    report = _derive("sigmoid", "mse", "sum").verify()
    assert not report and report.failed == ["dZ1", "dW1", "db1"]
    assert "not proved equal" in str(report) and "random point" not in str(report)


def _patch_vjp(monkeypatch, target: str):
    """Drop the transpose in the contribution to ``target``: still the right shape when
    every layer is square, but the wrong gradient."""
    honest = backprop.vjp

    def wrong(eq, G):
        out = honest(eq, G)
        return {s: (sp.Transpose(v).doit() if s.name == target else v) for s, v in out.items()}

    monkeypatch.setattr(backprop, "vjp", wrong)


def test_transposed_weight_gradient_is_caught(monkeypatch):
    _patch_vjp(monkeypatch, "W1")
    d = sn.derive(sn.Sequential(sn.Linear(3, 3), sn.Tanh(), sn.Linear(3, 3)),
                  sn.CrossEntropyLoss(reduction="sum"))
    assert str(d.backward[-2].rhs) == "X*dZ1.T"
    report = d.verify()
    assert not report and report.failed == ["dW1"]


def test_missing_transpose_in_backpropagated_error_is_caught(monkeypatch):
    honest = backprop.vjp

    def wrong(eq, G):
        out = honest(eq, G)
        W = next((s for s in out if s.name == "W2"), None)
        return {s: (W * G if W is not None and s.name == "A1" else v) for s, v in out.items()}

    monkeypatch.setattr(backprop, "vjp", wrong)
    d = sn.derive(sn.Sequential(sn.Linear(3, 3), sn.Tanh(), sn.Linear(3, 3)),
                  sn.CrossEntropyLoss(reduction="sum"))
    assert str(next(eq.rhs for eq in d.backward if eq.lhs.name == "dA1")) == "W2*dZ2"
    report = d.verify()
    assert not report and report.failed == ["dA1", "dZ1", "dW1", "db1"]


def test_output_error_without_batch_mean_is_caught(monkeypatch):
    honest = backprop.fuse

    def wrong(eqs, one_hot):
        out = []
        for eq in honest(eqs, one_hot):
            if eq.lhs.name == "dZ2":  # forget the 1/N of the mean reduction
                body = eq.rhs.body
                eq = sp.Eq(eq.lhs, Elementwise(sp.Lambda(body.variables, N * body.expr),
                                               *eq.rhs.operands), evaluate=False)
            out.append(eq)
        return out

    monkeypatch.setattr(backprop, "fuse", wrong)
    d = _derive("relu", "cross_entropy", "mean")
    assert "dZ2 = Ŷ − Y" in str(d)
    report = d.verify()
    assert not report
    assert report.failed == [eq.lhs.name for eq in d.backward]


# --- the report and the proof steps ---------------------------------------------------------

def test_report_truthiness():
    assert not Report("empty")
    assert Report("ok", [Check("dW1", True)])
    failing = Report("bad", [Check("dW1", True), Check("db1", False, "differs")])
    assert not failing and failing.failed == ["db1"] and failing.checked == ["dW1", "db1"]
    assert "FAILED: db1" in str(failing)


def test_zero_proves_identities_and_rejects_non_identities():
    w, a, z = sp.symbols("w a z", real=True)
    assert _zero(sp.exp(w * sp.log(1 + sp.exp(a))) - (1 + sp.exp(a)) ** w)
    assert _zero(sp.Max(0, z) - z * sp.Heaviside(z))
    assert _zero(sp.Min(0, z) - z * (1 - sp.Heaviside(z)))
    assert _zero(sp.Piecewise((z, z > 0), (z / 10, True)) - z * sp.Piecewise((1, z > 0),
                                                                              (sp.S(1) / 10, True)))
    assert _zero(sp.tanh(z) - (sp.exp(2 * z) - 1) / (sp.exp(2 * z) + 1))
    assert not _zero(sp.Max(0, z) - z)
    assert not _zero(sp.Max(0, z) - z * sp.Heaviside(-z))
    assert not _zero(sp.exp(w * sp.log(a)) - a ** (w + 1))
    assert not _zero(sp.tanh(z) - sp.sinh(z))


def test_custom_activation_example_verifies():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "examples" / "custom_activation.py")],
                          capture_output=True, text=True, encoding="utf-8", cwd=root,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "A1 = mish(Z1)" in done.stdout
    assert "symbolic verification: all hold" in done.stdout
    assert "central differences: all hold" in done.stdout
