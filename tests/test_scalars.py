"""Scalar expansion (symnet.symbolic.scalars): the chain rule run one equation at a time gives
what ``sympy.diff`` of the whole loss, expanded in the leaves, gives."""

from __future__ import annotations

import random

import pytest
import sympy as sp

import symnet as sn
from symnet.symbolic.graph import LOSS
from symnet.symbolic.scalars import Scalars
from symnet.symbolic.verify import _leaf_values, _shrink


def _shared():
    """One Linear used twice: its gradient sums two uses."""
    shared = sn.Linear(2, 2)
    return sn.Sequential(shared, sn.Tanh(), shared)


MODELS = {
    "tanh + mse": (lambda: sn.Sequential(sn.Linear(3, 2), sn.Tanh(), sn.Linear(2, 2)),
                   sn.MSELoss),
    "sigmoid + cross-entropy": (lambda: sn.Sequential(sn.Linear(2, 3), sn.Sigmoid(),
                                                      sn.Linear(3, 2)), sn.CrossEntropyLoss),
    "gelu + bce-with-logits": (lambda: sn.Sequential(sn.Linear(2, 2), sn.GELU(),
                                                     sn.Linear(2, 1)), sn.BCEWithLogitsLoss),
    "relu, log-softmax + nll": (lambda: sn.Sequential(sn.Linear(2, 2), sn.ReLU(),
                                                      sn.Linear(2, 2), sn.LogSoftmax()),
                                sn.NLLLoss),
    "shared parameters + mse": (_shared, sn.MSELoss),
}


@pytest.mark.parametrize("name", MODELS)
def test_chain_rule_is_the_derivative_of_the_whole_loss(name):
    make_model, make_loss = MODELS[name]
    d = sn.derive(make_model(), make_loss())
    forward, backward = _shrink(d, 2, 2)
    leaves = _leaf_values(forward, d.graph.loss.target_kind == "index")
    s = Scalars(leaves)
    s.run_forward(forward, LOSS)
    wanted = [eq.lhs.name[1:] for eq in backward if eq.lhs.name[1:] in d.graph.params]
    gradient = s.chain_rule(forward, LOSS, set(wanted))
    loss = s.resolve(s.values[LOSS.name][0, 0])
    rng = random.Random(0)
    point = {v: sp.Float(rng.uniform(0.1, 0.9), 30) for v in loss.free_symbols}
    for param in wanted:
        for v, g in zip(leaves[param], gradient[param]):
            expected = sp.N(sp.diff(loss, v).xreplace(point), 30)
            got = sp.N(s.resolve(g).xreplace(point), 30)
            assert abs(complex(got - expected)) < 1e-20, (param, v)


def test_every_definition_is_one_equation_on_its_inputs():
    d = sn.derive(sn.Sequential(sn.Linear(2, 2), sn.Tanh(), sn.Linear(2, 2), sn.Tanh(),
                                sn.Linear(2, 2)), sn.CrossEntropyLoss())
    forward, _ = _shrink(d, 2, 2)
    s = Scalars(_leaf_values(forward, True))
    s.run_forward(forward, LOSS)
    s.chain_rule(forward, LOSS, {"W1"})
    defined = list(s.definitions)
    for k, (symbol, expr) in enumerate(s.definitions.items()):
        assert expr.free_symbols & set(defined) <= set(defined[:k]), symbol
    # A2's entries read Z2's, never the input's: no definition reaches past its equation
    assert all(v.name.startswith("Z2[") for v in s.definitions[s.values["A2"][0, 0]].free_symbols)
