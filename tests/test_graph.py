"""Model + loss → forward equations (symnet.symbolic.graph): names, shapes, and their
numeric meaning."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen.expr import evaluate
from symnet.symbolic.graph import LOSS, N, build


def _shapes(graph) -> dict[str, tuple]:
    out = {eq.lhs.name: eq.lhs.shape for eq in graph.forward if eq.lhs != LOSS}
    out.update({s.name: s.shape for s in graph.leaves()})
    return out


def test_two_layer_names_and_shapes():
    model = sn.Sequential(sn.Linear(5, 4), sn.Tanh(), sn.Linear(4, 3))
    g = build(model, sn.CrossEntropyLoss())
    assert [str(eq.lhs) for eq in g.forward] == ["Z1", "A1", "Z2", "Yhat", "L"]
    assert _shapes(g) == {  # samples are columns: X is (in, N)
        "X": (5, N), "W1": (4, 5), "b1": (4, 1), "Z1": (4, N), "A1": (4, N),
        "W2": (3, 4), "b2": (3, 1), "Z2": (3, N), "Yhat": (3, N), "Y": (3, N),
    }
    assert g.inputs.name == "X" and g.target.name == "Y"
    assert g.forward[-1].lhs == LOSS
    assert g.params == {"W1": "0.weight", "b1": "0.bias", "W2": "2.weight", "b2": "2.bias"}


def test_params_match_the_state_dict_keys():
    model = sn.Sequential(sn.Linear(3, 4), sn.ReLU(), sn.Linear(4, 4), sn.ReLU(),
                          sn.Linear(4, 2, bias=False))
    g = build(model, sn.MSELoss())
    assert set(g.params.values()) == set(model.state_dict())
    state = model.state_dict()
    for name, key in g.params.items():
        rows, cols = (int(d) for d in g.symbol(name).shape)
        # a weight has PyTorch's (out, in) shape; a bias (out,) becomes the column (out, 1)
        assert state[key].shape == ((rows, cols) if name.startswith("W") else (rows,))
        assert cols == 1 or name.startswith("W")


def test_bias_false_has_no_bias_symbol():
    g = build(sn.Sequential(sn.Linear(3, 2, bias=False)), sn.MSELoss())
    assert "b1" not in _shapes(g)
    assert str(g.forward[0].rhs) == "W1*X"


@pytest.mark.parametrize("loss, tail, names", [
    (sn.MSELoss(), None, ["Z1", "A1", "Yhat", "L"]),
    (sn.CrossEntropyLoss(), None, ["Z1", "A1", "Z2", "Yhat", "L"]),
    (sn.BCEWithLogitsLoss(), None, ["Z1", "A1", "Z2", "Yhat", "L"]),
    (sn.BCELoss(), sn.Sigmoid, ["Z1", "A1", "Z2", "Yhat", "L"]),
    (sn.NLLLoss(), sn.LogSoftmax, ["Z1", "A1", "Z2", "Yhat", "L"]),
])
def test_names_per_loss(loss, tail, names):
    mods = [sn.Linear(3, 4), sn.Sigmoid(), sn.Linear(4, 2)] + ([tail()] if tail else [])
    assert [str(eq.lhs) for eq in build(sn.Sequential(*mods), loss).forward] == names


def test_nested_sequential_flattens_with_dotted_keys():
    inner = sn.Sequential(sn.Linear(4, 4), sn.Tanh())
    g = build(sn.Sequential(sn.Linear(3, 4), sn.Tanh(), inner, sn.Linear(4, 2)), sn.MSELoss())
    assert [str(eq.lhs) for eq in g.forward] == ["Z1", "A1", "Z2", "A2", "Yhat", "L"]
    assert g.params["W2"] == "2.0.weight"


def test_deep_names():
    mods = []
    for _ in range(9):
        mods += [sn.Linear(3, 3), sn.ReLU()]
    g = build(sn.Sequential(*mods, sn.Linear(3, 2)), sn.CrossEntropyLoss())
    names = [str(eq.lhs) for eq in g.forward]
    assert names[:2] == ["Z1", "A1"] and names[-4:] == ["A9", "Z10", "Yhat", "L"]
    assert len(names) == 9 * 2 + 1 + 2


# --- the forward equations mean what the seed says: compare with numpy --------------------

def _numeric_env(graph, rng, values):
    env = {}
    for s in graph.leaves():
        rows, cols = (int(d.subs(N, 5)) for d in s.shape)
        env[s.name] = values.get(s.name, rng.uniform(-1, 1, (rows, cols)))
    return {k: sp.Matrix(v) for k, v in env.items()}


def _run(graph, env):
    env = dict(env)
    for eq in graph.forward:
        rhs = eq.rhs.xreplace({N: 5})
        env[eq.lhs.name] = evaluate(rhs.xreplace(
            {s: sp.MatrixSymbol(s.name, *(d.subs(N, 5) for d in s.shape))
             for s in rhs.atoms(sp.MatrixSymbol)}), env)
    return env


def _softmax(z):
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_forward_matches_numpy(reduction):
    rng = np.random.default_rng(0)
    g = build(sn.Sequential(sn.Linear(3, 4), sn.Tanh(), sn.Linear(4, 3)),
              sn.CrossEntropyLoss(reduction))
    labels = rng.integers(0, 3, 5)
    Y = np.eye(3)[:, labels]
    env = _run(g, _numeric_env(g, rng, {"Y": Y}))
    arr = {k: np.array(v, dtype=float) for k, v in env.items() if k != "L"}
    Z1 = arr["W1"] @ arr["X"] + arr["b1"]
    Yhat = _softmax(arr["W2"] @ np.tanh(Z1) + arr["b2"])
    np.testing.assert_allclose(arr["Yhat"], Yhat, rtol=1e-12)
    expected = -np.log(Yhat[labels, range(5)]).sum() / (5 if reduction == "mean" else 1)
    assert float(env["L"]) == pytest.approx(expected, rel=1e-12)


def test_mse_mean_divides_by_every_entry():
    rng = np.random.default_rng(1)
    g = build(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss())
    env = _run(g, _numeric_env(g, rng, {}))
    arr = {k: np.array(v, dtype=float) for k, v in env.items() if k != "L"}
    pred = arr["W1"] @ arr["X"] + arr["b1"]
    assert float(env["L"]) == pytest.approx(((pred - arr["Y"]) ** 2).mean(), rel=1e-12)


def test_bce_with_logits_matches_its_definition():
    rng = np.random.default_rng(2)
    g = build(sn.Sequential(sn.Linear(3, 2)), sn.BCEWithLogitsLoss("sum"))
    Y = rng.uniform(0, 1, (2, 5))
    env = _run(g, _numeric_env(g, rng, {"Y": Y}))
    arr = {k: np.array(v, dtype=float) for k, v in env.items() if k != "L"}
    z = arr["W1"] @ arr["X"] + arr["b1"]
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(arr["Yhat"], p, rtol=1e-12)
    expected = -(Y * np.log(p) + (1 - Y) * np.log(1 - p)).sum()
    assert float(env["L"]) == pytest.approx(expected, rel=1e-10)


def test_build_rejects_non_modules():
    with pytest.raises(TypeError, match="Module"):
        build("not a model", sn.MSELoss())
    with pytest.raises(TypeError, match="loss"):
        build(sn.Sequential(sn.Linear(2, 2)), "mse")
    with pytest.raises(ValueError, match="no Linear"):
        build(sn.Sequential(sn.Tanh()), sn.MSELoss())


def test_index_losses_need_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        build(sn.Sequential(sn.Linear(3, 1)), sn.CrossEntropyLoss())
