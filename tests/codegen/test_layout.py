"""codegen.layout: each product is one BLAS call on the stored arrays, transposes chosen ahead.

The check is numeric: build the logical (features × N) matrices, store them as the layout
says, run ``np.dot`` on the chosen operands, and compare with the logical product stored
the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from codegen import layout

N = sp.Symbol("N", integer=True, positive=True)
BATCH, FEATURES, HIDDEN = 7, 3, 5

W = sp.MatrixSymbol("W", HIDDEN, FEATURES)
X = sp.MatrixSymbol("X", FEATURES, N)
Z = sp.MatrixSymbol("Z", HIDDEN, N)
A = sp.MatrixSymbol("A", FEATURES, N)
dZ = sp.MatrixSymbol("dZ", HIDDEN, N)
dW = sp.MatrixSymbol("dW", HIDDEN, FEATURES)
dA = sp.MatrixSymbol("dA", FEATURES, N)
S = sp.MatrixSymbol("S", FEATURES, FEATURES)
G = sp.MatrixSymbol("G", FEATURES, FEATURES)

# out = a·b, and the stored operands the seed's layout calls for
PRODUCTS = [
    ("Z = W·X", Z, W, X, (("X", False), ("W", True))),
    ("dW = dZ·Aᵀ", dW, dZ, A.T, (("dZ", True), ("A", False))),
    ("dA = Wᵀ·dZ", dA, W.T, dZ, (("dZ", False), ("W", False))),
    ("G = S·Sᵀ", G, S, S.T, (("S", False), ("S", True))),
    ("dA = Sᵀ·A", dA, S.T, A, (("A", False), ("S", False))),
]


def _logical(m: sp.MatrixSymbol, rng) -> np.ndarray:
    rows, cols = (BATCH if d == N else int(d) for d in m.shape)
    return rng.standard_normal((rows, cols))


def _stored(m: sp.MatrixSymbol, value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value.T if layout.batch_major(m, N) else value)


def _symbol(expr) -> sp.MatrixSymbol:
    return expr.arg if isinstance(expr, sp.Transpose) else expr


@pytest.mark.parametrize(("label", "out", "a", "b", "expected"), PRODUCTS,
                         ids=[p[0] for p in PRODUCTS])
def test_product_picks_the_transposes(label, out, a, b, expected):
    assert layout.product(out, a, b, N) == expected


@pytest.mark.parametrize(("label", "out", "a", "b", "expected"), PRODUCTS,
                         ids=[p[0] for p in PRODUCTS])
def test_product_on_stored_arrays_equals_the_logical_product(label, out, a, b, expected):
    rng = np.random.default_rng(0)
    values = {s.name: _logical(s, rng) for s in (_symbol(a), _symbol(b))}

    def logical(expr):
        return values[expr.arg.name].T if isinstance(expr, sp.Transpose) else values[expr.name]

    stored = {s.name: _stored(s, values[s.name]) for s in (_symbol(a), _symbol(b))}
    (left, t_left), (right, t_right) = layout.product(out, a, b, N)
    operand_l = stored[left].T if t_left else stored[left]
    operand_r = stored[right].T if t_right else stored[right]
    result = np.empty([BATCH if d == N else int(d) for d in layout.storage_shape(out, N)])
    np.dot(operand_l, operand_r, result)  # the out= form the kernels use
    np.testing.assert_allclose(result, _stored(out, logical(a) @ logical(b)), rtol=1e-13)


@pytest.mark.parametrize(("m", "shape"), [
    (X, (N, FEATURES)), (Z, (N, HIDDEN)), (W, (HIDDEN, FEATURES)),
    (sp.MatrixSymbol("b", HIDDEN, 1), (HIDDEN,)), (S, (FEATURES, FEATURES)),
])
def test_storage_shapes(m, shape):
    assert layout.storage_shape(m, N) == shape


def test_batch_major_is_the_users_array_without_a_copy():
    """A batch arrives (N, features) C-contiguous: exactly X's storage, no transpose."""
    assert layout.batch_major(X, N) and not layout.batch_major(W, N)
    assert not layout.batch_major(sp.MatrixSymbol("B", N, N), N)


def test_product_operands_must_be_named():
    with pytest.raises(TypeError, match="named matrix"):
        layout.product(Z, W, 2 * X, N)
