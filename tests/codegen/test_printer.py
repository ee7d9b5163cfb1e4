"""codegen.printer: scalar expressions → kernel source that means the same and stays finite.

Printed code is evaluated (plain Python with ``math``, and once compiled by Numba) and
compared with SymPy's own value, numpy's ``logaddexp`` and scipy's ``expit``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from codegen.cache import load_module
from codegen.printer import HELPERS, kernel_code

x, y = sp.symbols("x y", real=True)
special = pytest.importorskip("scipy.special")


def _python(expr: sp.Expr):
    """The printed expression as a plain Python function of (x, y)."""
    namespace = {"math": math}
    exec(HELPERS.replace("@{jit}\n", ""), namespace)
    exec(f"def f(x, y):\n    return {kernel_code(expr)}\n", namespace)
    return namespace["f"]


EXPRESSIONS = [
    x / sp.cosh(y) ** 2,  # a square in a denominator: a/(b*b), not a/b*b
    1 / (x * y) ** 2,
    (x + y) ** 2 / (1 + x**2),
    x**2 * y**2 / (x - 3) ** 2,
    sp.sqrt(1 + x**2) / y,
    (x**2 + 1) ** sp.Rational(3, 2),
    sp.Rational(1, 3) * x + sp.S.Half * y,
    sp.log(1 + sp.exp(x)) - y,
    1 / (1 + sp.exp(-x)),
    x / (1 + sp.exp(-x)),
    sp.log(1 + x**2),
    sp.exp(-x**2 / 2) * y,
    sp.erf(x / sp.sqrt(2)) + sp.tanh(y),
    sp.Piecewise((x, x > 0), (y * x / 10, True)),
    sp.Heaviside(x) * y,
    sp.Max(0, x) + sp.Min(x, y),
    x**-2 + y**3,
]


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_printed_code_means_the_expression(expr):
    f = _python(expr)
    rng = np.random.default_rng(0)
    for a, b in rng.uniform(-2.5, 2.5, (25, 2)):
        expected = float(sp.N(expr.subs({x: sp.Float(a, 30), y: sp.Float(b, 30)}), 30))
        assert f(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-13), (a, b)


@pytest.mark.parametrize(("expr", "code"), [
    (sp.log(1 + sp.exp(x)), "_softplus(x)"),
    (1 / (1 + sp.exp(-x)), "_sigmoid(x)"),
    (sp.log(1 + x), "math.log1p(x)"),
    (sp.Heaviside(x), "(1.0 if x > 0 else 0.0)"),
    (sp.sqrt(x), "math.sqrt(x)"),
])
def test_stable_forms_are_chosen(expr, code):
    assert kernel_code(expr) == code


LARGE = np.array([-800.0, -710.0, -100.0, -30.0, -1.0, -1e-9, 0.0, 1e-9, 1.0, 30.0, 100.0,
                  710.0, 800.0])


@pytest.fixture(scope="module")
def compiled():
    """softplus and sigmoid as printed, compiled by Numba into a tiny cached module."""
    source = "\n".join([
        "import math", "import numpy as np", "from numba import njit", "",
        HELPERS.format(jit="njit(cache=True, inline='always', error_model='numpy')"),
        "@njit(cache=True, error_model='numpy')",
        "def apply(xs, softplus, sigmoid, silu):",
        "    for i in range(xs.shape[0]):",
        "        x = xs[i]",
        f"        softplus[i] = {kernel_code(sp.log(1 + sp.exp(x)))}",
        f"        sigmoid[i] = {kernel_code(1 / (1 + sp.exp(-x)))}",
        f"        silu[i] = {kernel_code(x * 1 / (1 + sp.exp(-x)))}",
    ])
    module = load_module(source, {"test": "printer"})
    out = [np.empty_like(LARGE) for _ in range(3)]
    module.apply(LARGE, *out)
    return out


def test_softplus_is_finite_and_exact_for_large_inputs(compiled):
    softplus = compiled[0]
    assert np.isfinite(softplus).all()
    np.testing.assert_allclose(softplus, np.logaddexp(0.0, LARGE), rtol=1e-14, atol=0)


def test_sigmoid_is_finite_and_exact_for_large_inputs(compiled):
    sigmoid = compiled[1]
    assert np.isfinite(sigmoid).all()
    # atol: below exp(-708) the true value is subnormal (scipy rounds it to 0)
    np.testing.assert_allclose(sigmoid, special.expit(LARGE), rtol=1e-14, atol=1e-300)


def test_silu_is_finite_for_large_inputs(compiled):
    silu = compiled[2]
    assert not np.isnan(silu).any()
    np.testing.assert_allclose(silu, LARGE * special.expit(LARGE), rtol=1e-14, atol=1e-300)
