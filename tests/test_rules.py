"""Per-operation VJP rules (symnet.symbolic.rules) against SymPy's own calculus on explicit
scalars."""

from __future__ import annotations

import random

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import symnet as sn
from codegen.expr import Elementwise, LogSoftmax, Softmax, Total, evaluate
from symnet.symbolic import rules

x = sp.Symbol("x", real=True)
A_OUT = sp.Symbol("_a", real=True)  # the output symbol of rules.derivative's output form
POINTS = [sp.Rational(k, 7) for k in range(-27, 28, 2)]  # 28 points in [-3.9, 3.9], none 0


def _mish():
    return sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)


ACTIVATIONS = {
    "relu": sn.ReLU, "sigmoid": sn.Sigmoid, "tanh": sn.Tanh,
    "leaky_relu": lambda: sn.LeakyReLU(0.2), "softplus": sn.Softplus, "silu": sn.SiLU,
    "gelu": sn.GELU, "mish": _mish, "cube": lambda: sn.Activation("cube", x**3, x),
    "swish2": lambda: sn.Activation("swish2", x / (1 + sp.exp(-2 * x)), x),
}
#: f′ of each built-in written by hand, as a textbook states it (in terms of x).
TEXTBOOK = {
    "relu": sp.Piecewise((1, x > 0), (0, True)),
    "sigmoid": sp.exp(-x) / (1 + sp.exp(-x)) ** 2,
    "tanh": 1 / sp.cosh(x) ** 2,
    "leaky_relu": sp.Piecewise((1, x > 0), (sp.Rational(1, 5), True)),
    "softplus": 1 / (1 + sp.exp(-x)),
    "silu": 1 / (1 + sp.exp(-x)) + x * sp.exp(-x) / (1 + sp.exp(-x)) ** 2,
    "gelu": (1 + sp.erf(x / sp.sqrt(2))) / 2 + x * sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi),
    "cube": 3 * x**2,
}


def _in_x(f: sp.Expr) -> sp.Expr:
    """rules.derivative(f) written in terms of x, whichever form it came in."""
    fprime, uses_output = rules.derivative(f, x)
    if uses_output:
        assert fprime.free_symbols <= {A_OUT}
        return fprime.xreplace({A_OUT: f})
    assert fprime.free_symbols <= {x}
    return fprime


def _close(a: sp.Expr, b: sp.Expr, points=POINTS, tol=1e-12) -> None:
    for p in points:
        va, vb = complex(sp.N(a.subs(x, p), 30)), complex(sp.N(b.subs(x, p), 30))
        assert abs(va - vb) <= tol * (1 + abs(vb)), (p, a, b, va, vb)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_sympy_diff(name):
    act = ACTIVATIONS[name]()
    _close(_in_x(act.expr), sp.diff(act.expr, x))


@pytest.mark.parametrize("name", sorted(TEXTBOOK))
def test_derivative_matches_textbook(name):
    act = ACTIVATIONS[name]()
    _close(_in_x(act.expr), TEXTBOOK[name])


@pytest.mark.parametrize("name, expected", [
    ("sigmoid", A_OUT * (1 - A_OUT)),
    ("tanh", 1 - A_OUT**2),
])
def test_output_forms_are_the_textbook_polynomials(name, expected):
    fprime, uses_output = rules.derivative(ACTIVATIONS[name]().expr, x)
    assert uses_output
    assert sp.expand(fprime - expected) == 0
    # and substituting the output back gives sympy.diff symbolically
    f = ACTIVATIONS[name]().expr
    assert sp.simplify((fprime.xreplace({A_OUT: f}) - sp.diff(f, x)).rewrite(sp.exp)) == 0


def test_relu_derivative_is_the_step():
    fprime, uses_output = rules.derivative(sp.Max(0, x), x)
    assert not uses_output
    assert fprime.subs(x, 2) == 1 and fprime.subs(x, -2) == 0


def test_exponential_activation_derivative_in_output_form():
    f = 3 * sp.exp(2 * x)
    fprime, uses_output = rules.derivative(f, x)
    assert uses_output and sp.expand(fprime - 2 * A_OUT) == 0


coefficients = st.integers(min_value=-3, max_value=3)


@settings(max_examples=15, deadline=None)
@given(c=st.lists(coefficients, min_size=4, max_size=4), d=coefficients, e=coefficients)
def test_random_compositions_match_sympy_diff(c, d, e):
    f = sum(ck * x**k for k, ck in enumerate(c)) + d * sp.exp(e * x / 2) + sp.tanh(x) * c[0]
    if x not in f.free_symbols:
        f = f + x
    _close(_in_x(f), sp.diff(f, x), points=POINTS[::4])


# --- linear algebra rules against sympy.diff of Σ G ⊙ rhs on explicit matrices ----------

def _explicit(name, rows, cols):
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name.lower()}_{i}{j}", real=True))


def _check_vjp(eq, G, inputs):
    """Each rule result equals d(Σ G ⊙ rhs)/d(input), computed by sympy.diff on scalars."""
    env = {s.name: _explicit(s.name, *s.shape) for s in (*eq.rhs.atoms(sp.MatrixSymbol), G)}
    out = evaluate(eq.rhs, env)
    scalar = sum(g * o for g, o in zip(env[G.name], out))
    result = rules.vjp(eq, G)
    assert {s.name for s in result} == set(inputs)
    for symbol, contribution in result.items():
        expected = env[symbol.name].applyfunc(lambda v: sp.diff(scalar, v))
        got = evaluate(contribution, {**env, eq.lhs.name: out})
        assert (got - expected).applyfunc(sp.simplify) == sp.zeros(*expected.shape), symbol


def test_linear_rule_with_bias():
    W, X, b = sp.MatrixSymbol("W1", 3, 2), sp.MatrixSymbol("X", 2, 4), sp.MatrixSymbol("b1", 3, 1)
    Z, G = sp.MatrixSymbol("Z1", 3, 4), sp.MatrixSymbol("dZ1", 3, 4)
    eq = sp.Eq(Z, W * X + b * sp.OneMatrix(1, 4), evaluate=False)
    _check_vjp(eq, G, {"W1", "X", "b1"})
    result = {s.name: str(v) for s, v in rules.vjp(eq, G).items()}
    assert result == {"W1": "dZ1*X.T", "X": "W1.T*dZ1", "b1": "dZ1*1"}


def test_linear_rule_serves_every_shape():
    # the rule is derived once per pattern over symbolic sizes; each shape must map back
    for rows, inner, cols in [(2, 3, 5), (5, 1, 2), (1, 4, 1)]:
        W, A = sp.MatrixSymbol("W", rows, inner), sp.MatrixSymbol("A", inner, cols)
        eq = sp.Eq(sp.MatrixSymbol("Z", rows, cols), W * A, evaluate=False)
        _check_vjp(eq, sp.MatrixSymbol("dZ", rows, cols), {"W", "A"})


def test_elementwise_rule():
    Z, A, G = (sp.MatrixSymbol(n, 2, 3) for n in ("Z1", "A1", "dA1"))
    v = sp.Symbol("v", real=True)
    eq = sp.Eq(A, Elementwise(sp.Lambda(v, v * sp.tanh(v) + v**3), Z), evaluate=False)
    _check_vjp(eq, G, {"Z1"})


@pytest.mark.parametrize("op", [Softmax, LogSoftmax])
def test_column_rules(op):
    Z, S, G = (sp.MatrixSymbol(n, 3, 2) for n in ("Z2", "S", "dS"))
    _check_vjp(sp.Eq(S, op(Z), evaluate=False), G, {"Z2"})


@pytest.mark.parametrize("loss", [
    sn.MSELoss(), sn.MSELoss("sum"), sn.BCELoss(), sn.CrossEntropyLoss(),
    sn.Loss("quartic", (sp.Symbol("p") - sp.Symbol("t")) ** 4, sp.Symbol("p"), sp.Symbol("t")),
])
def test_loss_gradient(loss):
    P, Y = sp.MatrixSymbol("P", 2, 3), sp.MatrixSymbol("Y", 2, 3)
    pv, tv = sp.symbols("_p _t", real=True)
    body = Elementwise(sp.Lambda((pv, tv), loss.expr.xreplace({sn.nn.losses.p: pv,
                                                               sn.nn.losses.y: tv})), P, Y)
    scale = sp.Rational(1, 6) if loss.reduction == "mean" else sp.Integer(1)
    pred, grad = rules.loss_gradient(scale * Total(body))
    assert pred == P
    env = {"P": _explicit("P", 2, 3), "Y": _explicit("Y", 2, 3)}
    value = evaluate(scale * Total(body), env)
    expected = env["P"].applyfunc(lambda v: sp.diff(value, v))
    got = evaluate(grad, env)
    rng = random.Random(1)
    point = {s: sp.Rational(rng.randint(10, 90), 100)
             for s in got.free_symbols | expected.free_symbols}
    for a, b in zip(got, expected):
        assert abs(sp.N((a - b).xreplace(point))) < 1e-12


def test_unknown_operation_has_no_rule():
    Z = sp.MatrixSymbol("Z", 2, 2)
    with pytest.raises(TypeError, match="no derivative rule"):
        rules.vjp(sp.Eq(Z, sp.Inverse(sp.MatrixSymbol("W", 2, 2)), evaluate=False), Z)
