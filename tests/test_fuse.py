"""Fusion (symnet.symbolic.fuse): softmax + cross-entropy into Ŷ − Y, and when it must not
happen."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn
import symnet.symbolic.backprop as bp
from codegen.expr import Elementwise, SoftmaxVJP
from symnet.symbolic import printing
from symnet.symbolic.fuse import fuse
from symnet.symbolic.graph import N, build


def _body_by_name(eq) -> sp.Expr:
    """The elementwise right side as a formula in symbols named after its operands."""
    assert isinstance(eq.rhs, Elementwise), eq
    return eq.rhs.body(*(sp.Symbol(m.name) for m in eq.rhs.operands))


Yhat, Y = sp.Symbol("Yhat"), sp.Symbol("Y")


def _model(*tail):
    return sn.Sequential(sn.Linear(3, 4), sn.Tanh(), sn.Linear(4, 3), *tail)


@pytest.mark.parametrize("reduction, expected", [("sum", Yhat - Y), ("mean", (Yhat - Y) / N)])
def test_softmax_cross_entropy_fuses_to_yhat_minus_y(reduction, expected):
    d = sn.derive(_model(), sn.CrossEntropyLoss(reduction))
    dZ2 = d.backward[0]
    assert dZ2.lhs.name == "dZ2"
    assert sp.simplify(_body_by_name(dZ2) - expected) == 0
    assert not any(isinstance(eq.rhs, SoftmaxVJP) for eq in d.backward)


def _unfused(monkeypatch, graph):
    """The sweep's equations before fusion."""
    monkeypatch.setattr(bp, "fuse", lambda eqs, one_hot: list(eqs))
    return bp.backward(graph)


def test_unfused_sweep_has_the_textbook_chain(monkeypatch):
    eqs = _unfused(monkeypatch, build(_model(), sn.CrossEntropyLoss("sum")))
    assert [eq.lhs.name for eq in eqs][:2] == ["dYhat", "dZ2"]
    assert sp.simplify(_body_by_name(eqs[0]) - (-Y / Yhat)) == 0
    assert printing.text(eqs[1].rhs) == "Ŷ ⊙ (dŶ − 1·1ᵀ(Ŷ ⊙ dŶ))"


def test_without_one_hot_targets_the_sum_stays(monkeypatch):
    # Σ_k Y_k = 1 only for one-hot (class-index) targets; soft targets keep the full VJP
    eqs = _unfused(monkeypatch, build(_model(), sn.CrossEntropyLoss("sum")))
    soft = fuse(eqs, one_hot=set())
    assert [eq.lhs.name for eq in soft][:2] == ["dYhat", "dZ2"]
    assert isinstance(soft[1].rhs, SoftmaxVJP)
    hard = fuse(eqs, one_hot={"Y"})
    assert [eq.lhs.name for eq in hard][:2] == ["dZ2", "dW2"]


def test_fused_output_error_matches_numpy():
    rng = np.random.default_rng(0)
    d = sn.derive(_model(), sn.CrossEntropyLoss())
    z = rng.normal(size=(3, 5))
    probabilities = np.exp(z) / np.exp(z).sum(axis=0)
    labels = rng.integers(0, 3, 5)
    onehot = np.eye(3)[:, labels]
    f = sp.lambdify([Yhat, Y, N], _body_by_name(d.backward[0]), "numpy")
    # the textbook gradient of mean CE through softmax, written out in numpy
    np.testing.assert_allclose(f(probabilities, onehot, 5), (probabilities - onehot) / 5,
                               rtol=1e-14)


@pytest.mark.parametrize("loss, tail, entries", [
    (sn.BCELoss("mean"), [sn.Sigmoid()], 3),
    (sn.BCEWithLogitsLoss("mean"), [], 3),
    (sn.BCELoss("sum"), [sn.Sigmoid()], 1),
])
def test_binary_cross_entropy_after_sigmoid(loss, tail, entries):
    d = sn.derive(_model(*tail), loss)
    first = d.backward[0]
    assert first.lhs.name == "dZ2"
    expected = (Yhat - Y) / (entries * N) if loss.reduction == "mean" else Yhat - Y
    assert sp.simplify(_body_by_name(first) - expected) == 0


def test_nll_after_log_softmax():
    d = sn.derive(_model(sn.LogSoftmax()), sn.NLLLoss("sum"))
    first = d.backward[0]
    assert first.lhs.name == "dZ2"
    # Ŷ holds log-probabilities here: dZ2 = exp(Ŷ) − Y
    assert sp.simplify(_body_by_name(first) - (sp.exp(Yhat) - Y)) == 0


def test_mse_keeps_its_output_gradient():
    # dŶ feeds dW2, db2 and dA1: three consumers, nothing to fuse
    d = sn.derive(_model(), sn.MSELoss("sum"))
    assert [eq.lhs.name for eq in d.backward][:4] == ["dYhat", "dW2", "db2", "dA1"]


def test_fuse_merges_single_use_elementwise_chains_only_when_shorter():
    A, B, C = (sp.MatrixSymbol(n, 2, 2) for n in ("A", "dB", "dC"))
    u, v = sp.symbols("u v", real=True)
    inner = sp.Eq(B, Elementwise(sp.Lambda((u,), 2 * u), A), evaluate=False)
    outer = sp.Eq(C, Elementwise(sp.Lambda((u, v), u / 2 + 0 * v), B, A), evaluate=False)
    fused = fuse([inner, outer], set())
    assert [eq.lhs.name for eq in fused] == ["dC"]
    assert sp.simplify(_body_by_name(fused[0]) - sp.Symbol("A")) == 0
    # used twice: stays
    other = sp.Eq(sp.MatrixSymbol("dD", 2, 2), Elementwise(sp.Lambda((u,), u + 1), B),
                  evaluate=False)
    kept = fuse([inner, outer, other], set())
    assert [eq.lhs.name for eq in kept] == ["dB", "dC", "dD"]
