"""The reverse sweep (symnet.symbolic.backprop): the seed's backprop formulas, any depth, and the
derived equations evaluated numerically against PyTorch autograd in float64."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen.expr import evaluate
from symnet.symbolic import printing
from symnet.symbolic.graph import N

x = sp.Symbol("x", real=True)


def _two_layer(activation, loss, hidden=4):
    return sn.derive(sn.Sequential(sn.Linear(3, hidden), activation, sn.Linear(hidden, 3)), loss)


def _rhs(d) -> dict[str, sp.Basic]:
    return {eq.lhs.name: eq.rhs for eq in d.backward}


# --- the seed's formulas -------------------------------------------------------------------

@pytest.mark.parametrize("activation", [sn.Sigmoid, sn.Tanh, sn.ReLU])
def test_cross_entropy_sum_gives_the_seed_backprop(activation):
    d = _two_layer(activation(), sn.CrossEntropyLoss(reduction="sum"))
    assert [eq.lhs.name for eq in d.backward] == ["dZ2", "dW2", "db2", "dA1", "dZ1", "dW1",
                                                  "db1"]
    rhs = _rhs(d)
    assert str(rhs["dW2"]) == "dZ2*A1.T"
    assert str(rhs["db2"]) == "dZ2*1"
    assert str(rhs["dA1"]) == "W2.T*dZ2"
    assert str(rhs["dW1"]) == "dZ1*X.T"
    assert str(rhs["db1"]) == "dZ1*1"
    assert printing.text(rhs["dZ2"]) == "Ŷ − Y"
    for eq in d.backward:  # every gradient has the shape of what it differentiates
        assert eq.lhs.shape == d.graph.symbol(eq.lhs.name[1:]).shape


@pytest.mark.parametrize("reduction, text", [("sum", "Ŷ − Y"), ("mean", "(Ŷ − Y)/N")])
def test_softmax_cross_entropy_output_error(reduction, text):
    d = _two_layer(sn.Tanh(), sn.CrossEntropyLoss(reduction=reduction))
    assert printing.text(_rhs(d)["dZ2"]) == text


@pytest.mark.parametrize("activation, text", [
    (sn.Sigmoid, "dA1 ⊙ A1 ⊙ (1 − A1)"),
    (sn.Tanh, "dA1 ⊙ (1 − A1²)"),
    (sn.ReLU, "dA1 ⊙ (Z1 > 0)"),
])
def test_activation_derivative_printed(activation, text):
    d = _two_layer(activation(), sn.CrossEntropyLoss())
    assert printing.text(_rhs(d)["dZ1"]) == text


def test_mse_output_gradient_is_named_dYhat():
    d = _two_layer(sn.Tanh(), sn.MSELoss(reduction="sum"))
    assert [eq.lhs.name for eq in d.backward][:2] == ["dYhat", "dW2"]
    grad = _rhs(d)["dYhat"]
    assert [m.name for m in grad.operands] == ["Y", "Yhat"] or [
        m.name for m in grad.operands] == ["Yhat", "Y"]
    yhat, y = sp.symbols("yhat y")
    by_name = {"Yhat": yhat, "Y": y}
    body = grad.body(*(by_name[m.name] for m in grad.operands))
    assert sp.expand(body - 2 * (yhat - y)) == 0


def test_bias_free_layers_have_no_bias_gradient():
    d = sn.derive(sn.Sequential(sn.Linear(3, 4, bias=False), sn.Tanh(),
                                sn.Linear(4, 2, bias=False)), sn.CrossEntropyLoss())
    assert [eq.lhs.name for eq in d.backward] == ["dZ2", "dW2", "dA1", "dZ1", "dW1"]


def test_first_layer_gets_no_input_gradient():
    d = _two_layer(sn.Tanh(), sn.MSELoss())
    assert "dX" not in _rhs(d) and "dY" not in _rhs(d)


@pytest.mark.parametrize("first, gradients", [
    (sn.Dropout(0.2), ["dZ1", "dW1", "db1"]),  # no dD1 = W1ᵀ·dZ1: a product a step saved
    (sn.LayerNorm(3), ["dZ1", "dW1", "db1", "dln1", "dgamma_1", "dbeta_1"]),  # no dxhat1
])
def test_what_the_input_alone_makes_gets_no_gradient(first, gradients):
    d = sn.derive(sn.Sequential(first, sn.Linear(3, 2)), sn.CrossEntropyLoss())
    assert [eq.lhs.name for eq in d.backward] == gradients
    assert d.verify()


# --- any depth ---------------------------------------------------------------------------

def _mlp(depth: int, width: int, activation=sn.ReLU, inputs: int | None = None, outputs=None):
    widths = [inputs or width] + [width] * (depth - 1) + [outputs or width]
    mods = []
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        mods.append(sn.Linear(a, b))
        if k < depth - 1:
            mods.append(activation())
    return sn.Sequential(*mods)


def test_ten_layers_derive_to_the_expected_list():
    d = sn.derive(_mlp(10, 8), sn.CrossEntropyLoss())
    expected = ["dZ10", "dW10", "db10"]
    for layer in range(9, 0, -1):
        expected += [f"dA{layer}", f"dZ{layer}", f"dW{layer}", f"db{layer}"]
    assert [eq.lhs.name for eq in d.backward] == expected
    rhs = _rhs(d)
    for layer in range(1, 10):
        assert str(rhs[f"dA{layer}"]) == f"W{layer + 1}.T*dZ{layer + 1}"
        assert printing.text(rhs[f"dZ{layer}"]) == f"dA{layer} ⊙ (Z{layer} > 0)"
        source = "X" if layer == 1 else f"A{layer - 1}"
        assert str(rhs[f"dW{layer}"]) == f"dZ{layer}*{source}.T"
    assert "dW10 = dZ10·A9ᵀ" in str(d)


def test_four_layers_gradcheck():
    # verified symbolically in test_verify (ReLU only: smooth activations four layers deep
    # take SymPy minutes to prove); central differences are cheap at any depth
    model = sn.Sequential(sn.Linear(2, 3), sn.Tanh(), sn.Linear(3, 3), sn.Sigmoid(),
                          sn.Linear(3, 3), sn.ReLU(), sn.Linear(3, 2))
    d = sn.derive(model, sn.CrossEntropyLoss())
    report = d.gradcheck()
    assert report, str(report)
    assert report.checked == [f"d{p}{k}" for k in range(4, 0, -1) for p in "Wb"]


# --- numeric comparison with PyTorch autograd ---------------------------------------------

def _numeric(derivation, values: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Evaluate forward then backward equations on float values (samples are columns)."""
    def concrete(expr):
        expr = expr.xreplace({N: batch})
        return expr.xreplace({s: sp.MatrixSymbol(s.name, *(sp.sympify(d).subs(N, batch)
                                                           for d in s.shape))
                              for s in expr.atoms(sp.MatrixSymbol)})

    env = {k: sp.Matrix(v) for k, v in values.items()}
    for eq in [*derivation.forward, *derivation.backward]:
        # evalf: keep entries numbers (erf(0.5·√2) would otherwise stay symbolic and grow)
        env[eq.lhs.name] = evaluate(concrete(eq.rhs), env).evalf()
    return {k: (float(v) if not isinstance(v, sp.MatrixBase) else np.array(v, dtype=float))
            for k, v in env.items()}


TORCH_ACTIVATIONS = {
    "relu": (sn.ReLU, "ReLU", {}), "sigmoid": (sn.Sigmoid, "Sigmoid", {}),
    "tanh": (sn.Tanh, "Tanh", {}), "gelu": (sn.GELU, "GELU", {}),
    "silu": (sn.SiLU, "SiLU", {}), "softplus": (sn.Softplus, "Softplus", {}),
    "leaky": (lambda: sn.LeakyReLU(0.1), "LeakyReLU", {"negative_slope": 0.1}),
}
TORCH_CASES = [  # activation, loss, reduction
    ("tanh", "cross-entropy", "mean"), ("relu", "mse", "sum"),
    ("sigmoid", "bce-with-logits", "mean"), ("gelu", "nll", "mean"),
    ("silu", "bce", "sum"), ("leaky", "cross-entropy", "sum"), ("softplus", "mse", "mean"),
]


@pytest.mark.parametrize("activation, loss, reduction", TORCH_CASES)
def test_matches_torch_autograd(activation, loss, reduction):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    make, torch_name, kwargs = TORCH_ACTIVATIONS[activation]
    n_in, hidden, classes, batch = 3, 4, 3, 5
    rng = np.random.default_rng(7)
    W1, b1 = rng.normal(size=(hidden, n_in)), rng.normal(size=hidden)
    W2, b2 = rng.normal(size=(classes, hidden)), rng.normal(size=classes)
    X = rng.normal(size=(batch, n_in))  # torch layout: samples are rows
    labels = rng.integers(0, classes, batch)
    soft = rng.uniform(0.05, 0.95, (batch, classes))

    tail = {"nll": [sn.LogSoftmax()], "bce": [sn.Sigmoid()]}.get(loss, [])
    sn_loss = {"cross-entropy": sn.CrossEntropyLoss, "mse": sn.MSELoss, "nll": sn.NLLLoss,
               "bce": sn.BCELoss, "bce-with-logits": sn.BCEWithLogitsLoss}[loss](reduction)
    d = sn.derive(sn.Sequential(sn.Linear(n_in, hidden), make(), sn.Linear(hidden, classes),
                                *tail), sn_loss)
    index_target = loss in ("cross-entropy", "nll")
    Y = np.eye(classes)[labels] if index_target else soft
    got = _numeric(d, {"X": X.T, "W1": W1, "b1": b1[:, None], "W2": W2, "b2": b2[:, None],
                       "Y": Y.T}, batch)

    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in dict(W1=W1, b1=b1, W2=W2, b2=b2).items()}
    Z1 = torch.tensor(X) @ t["W1"].T + t["b1"]
    A1 = getattr(nn, torch_name)(**kwargs)(Z1)
    Z2 = A1 @ t["W2"].T + t["b2"]
    for v in (Z1, A1, Z2):
        v.retain_grad()
    out = {"nll": lambda z: torch.log_softmax(z, dim=1), "bce": torch.sigmoid}.get(
        loss, lambda z: z)(Z2)
    out.retain_grad()
    criterion = {"cross-entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss, "nll": nn.NLLLoss,
                 "bce": nn.BCELoss, "bce-with-logits": nn.BCEWithLogitsLoss}[loss](
        reduction=reduction)
    target = torch.tensor(labels) if index_target else torch.tensor(soft)
    value = criterion(out, target)
    value.backward()

    assert got["L"] == pytest.approx(value.item(), rel=1e-10)
    expected = {"dW1": t["W1"].grad, "db1": t["b1"].grad[:, None], "dW2": t["W2"].grad,
                "db2": t["b2"].grad[:, None], "dZ1": Z1.grad.T, "dA1": A1.grad.T,
                "dZ2": Z2.grad.T, "dYhat": out.grad.T}
    compared = 0
    for eq in d.backward:
        name = eq.lhs.name
        if name == "dYhat" and tail:
            continue  # Ŷ is the output of the tail module
        if name in expected:
            np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-9,
                                       atol=1e-12, err_msg=name)
            compared += 1
    assert compared == len(d.backward)


# --- optimizer updates, evaluated, against torch.optim -------------------------------------

def _step(derivation, env, hyper, t):
    scalars = {sp.Symbol(k, real=True): v for k, v in hyper.items()}
    scalars[sp.Symbol("t", integer=True, positive=True)] = t
    for eq in derivation.updates:
        env[eq.lhs.name] = evaluate(eq.rhs, env).xreplace(scalars).evalf()


@pytest.mark.parametrize("make, kwargs", [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
])
def test_update_equations_match_torch_optim(make, kwargs):
    torch = pytest.importorskip("torch")
    model = sn.Sequential(sn.Linear(2, 3))
    optimizer = getattr(sn.optim, make)(model.parameters(), **kwargs)
    d = sn.derive(model, sn.MSELoss(), optimizer)
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=(3, 1))
    grads = [(rng.normal(size=(3, 2)), rng.normal(size=(3, 1))) for _ in range(3)]

    env = {"W1": sp.Matrix(W), "b1": sp.Matrix(b)}
    for prefix in optimizer.state_prefixes:
        env[prefix + "W1"], env[prefix + "b1"] = sp.zeros(3, 2), sp.zeros(3, 1)
    tw = torch.tensor(W, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    reference = getattr(torch.optim, make)([tw, tb], **kwargs)
    for step, (gW, gb) in enumerate(grads, start=1):
        env["dW1"], env["db1"] = sp.Matrix(gW), sp.Matrix(gb)
        _step(d, env, optimizer.hyperparameters(), step)
        tw.grad, tb.grad = torch.tensor(gW), torch.tensor(gb)
        reference.step()
        np.testing.assert_allclose(np.array(env["W1"], dtype=float), tw.detach().numpy(),
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.array(env["b1"], dtype=float), tb.detach().numpy(),
                                   rtol=1e-12, atol=1e-14)


def test_updates_cover_every_parameter_in_order():
    model = sn.Sequential(sn.Linear(3, 4), sn.Tanh(), sn.Linear(4, 2))
    d = sn.derive(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    assert [eq.lhs.name for eq in d.updates] == ["W1", "b1", "W2", "b2"]
