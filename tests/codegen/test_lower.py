"""codegen.lower: equations → kernel IR, run through the CPU backend and checked with numpy.

Each case lowers a few equations in the seed's convention (samples are columns), renders
and imports the module, calls it on stored (batch-major) arrays and compares with the same
formulas evaluated by numpy on the logical matrices.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.expr import Elementwise, LogSoftmax, Softmax, SoftmaxVJP, Total
from codegen.ir import Loop, MatMul, RowOp, RowSum
from codegen.lower import lower

special = pytest.importorskip("scipy.special")

N = sp.Symbol("N", integer=True, positive=True)
BATCH, IN, OUT = 9, 4, 3
W = sp.MatrixSymbol("W1", OUT, IN)
b = sp.MatrixSymbol("b1", OUT, 1)
X = sp.MatrixSymbol("X", IN, N)
Z = sp.MatrixSymbol("Z1", OUT, N)
A = sp.MatrixSymbol("A1", OUT, N)
Y = sp.MatrixSymbol("Y", OUT, N)
S = sp.MatrixSymbol("S", OUT, N)
dZ = sp.MatrixSymbol("dZ1", OUT, N)
dW = sp.MatrixSymbol("dW1", OUT, IN)
db = sp.MatrixSymbol("db1", OUT, 1)
v, w = sp.symbols("v w", real=True)
L = sp.Symbol("L")


def _eq(lhs, rhs):
    return sp.Eq(lhs, rhs, evaluate=False)


def _run(program, arrays: dict[str, np.ndarray], scalars: dict | None = None):
    """Compile ``program`` and call it; buffers it needs beyond ``arrays`` are allocated."""
    module = load_module(render_module([program], N), {"test": "lower"})
    args = []
    for name in program.arguments:
        if name not in arrays:
            shape = [BATCH if d == N else int(d) for d in program.buffers[name].shape]
            arrays[name] = np.full(shape, np.nan)
        args.append(arrays[name])
    result = getattr(module, program.name)(*args, *[(scalars or {})[s]
                                                     for s in program.scalars])
    return result, arrays


def _inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((BATCH, IN)), "W1": rng.standard_normal((OUT, IN)) * scale,
            "b1": rng.standard_normal(OUT)}


def test_linear_then_activation_is_one_product_and_one_fused_loop():
    eqs = [_eq(Z, W * X + b * sp.OneMatrix(1, N)),
           _eq(A, Elementwise(sp.Lambda(v, sp.tanh(v)), Z, label="tanh"))]
    program = lower("forward", eqs, N, leading=("X",), keep=frozenset({"A1"}))
    kinds = [type(op) for op in program.ops]
    assert kinds == [MatMul, Loop]  # bias + tanh fused: one pass over Z
    arrays = _inputs()
    _, out = _run(program, arrays)
    logical = np.tanh(arrays["W1"] @ arrays["X"].T + arrays["b1"][:, None])
    np.testing.assert_allclose(out["A1"], logical.T, rtol=1e-13)


def test_intermediates_not_kept_become_registers():
    eqs = [_eq(Z, W * X + b * sp.OneMatrix(1, N)),
           _eq(A, Elementwise(sp.Lambda(v, v * v), Z))]
    kept = lower("f", eqs, N, leading=("X",), keep=frozenset({"A1", "Z1"}))
    dropped = lower("f", eqs, N, leading=("X",), keep=frozenset({"A1"}))
    (loop,) = [op for op in kept.ops if isinstance(op, Loop)]
    assert loop.locals == frozenset()
    (loop,) = [op for op in dropped.ops if isinstance(op, Loop)]
    assert loop.locals == frozenset({"Z1"})  # Z1 + b lives in a register only
    arrays = _inputs(7)
    _, out = _run(dropped, arrays)
    logical = (arrays["W1"] @ arrays["X"].T + arrays["b1"][:, None]) ** 2
    np.testing.assert_allclose(out["A1"], logical.T, rtol=1e-13)


def test_backward_products_and_bias_gradient():
    eqs = [_eq(dW, dZ * X.T), _eq(db, dZ * sp.OneMatrix(N, 1))]
    program = lower("grads", eqs, N, leading=("dZ1", "X"), keep=frozenset({"dW1", "db1"}))
    assert [type(op) for op in program.ops] == [MatMul, RowSum]
    rng = np.random.default_rng(1)
    grad, inputs = rng.standard_normal((OUT, BATCH)), rng.standard_normal((IN, BATCH))
    _, out = _run(program, {"dZ1": np.ascontiguousarray(grad.T),
                            "X": np.ascontiguousarray(inputs.T)})
    np.testing.assert_allclose(out["dW1"], grad @ inputs.T, rtol=1e-13)
    np.testing.assert_allclose(out["db1"], grad @ np.ones(BATCH), rtol=1e-13)


def _cross_entropy_program():
    eqs = [_eq(Z, W * X + b * sp.OneMatrix(1, N)),
           _eq(S, Softmax(Z)),
           _eq(L, Total(Elementwise(sp.Lambda((v, w), -w * sp.log(v)), S, Y)) / N)]
    return lower("loss", eqs, N, leading=("X", "Y"), keep=frozenset({"S"}))


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_log_of_softmax_reads_a_log_softmax(scale):
    program = _cross_entropy_program()
    (row,) = [op for op in program.ops if isinstance(op, RowOp)]  # one pass over each row
    assert (row.kind, row.outputs) == ("softmax_log_softmax", ("S", "log_S"))
    arrays = _inputs(2, scale)
    labels = np.random.default_rng(3).integers(0, OUT, BATCH)
    arrays["Y"] = np.eye(OUT)[labels]
    value, out = _run(program, arrays)
    logits = arrays["X"] @ arrays["W1"].T + arrays["b1"]  # stored (N, OUT)
    log_p = special.log_softmax(logits, axis=1)
    assert np.isfinite(value)  # with logits in the hundreds, log(softmax) would be -inf
    assert value == pytest.approx(-log_p[np.arange(BATCH), labels].mean(), rel=1e-12)
    np.testing.assert_allclose(out["S"], special.softmax(logits, axis=1), rtol=1e-12,
                               atol=1e-300)
    np.testing.assert_allclose(out["log_S"], log_p, rtol=1e-12)


def test_log_softmax_and_softmax_vjp_rows():
    G = sp.MatrixSymbol("G", OUT, N)
    P = sp.MatrixSymbol("P", OUT, N)
    dP = sp.MatrixSymbol("dP", OUT, N)
    eqs = [_eq(P, LogSoftmax(Z)), _eq(S, Softmax(Z)), _eq(dP, SoftmaxVJP(S, G))]
    program = lower("rows", eqs, N, leading=("Z1", "G"), keep=frozenset({"P", "S", "dP"}))
    rng = np.random.default_rng(4)
    logits, grad = rng.standard_normal((BATCH, OUT)) * 50, rng.standard_normal((BATCH, OUT))
    _, out = _run(program, {"Z1": logits, "G": grad})
    soft = special.softmax(logits, axis=1)
    # log-softmax is exact to a few ulps of the logits' magnitude, not of each entry
    np.testing.assert_allclose(out["P"], special.log_softmax(logits, axis=1), rtol=1e-12,
                               atol=1e-14 * np.abs(logits).max())
    # the VJP of a softmax, from its Jacobian diag(s) - s sᵀ, sample by sample
    expected = np.stack([(np.diag(s) - np.outer(s, s)) @ g for s, g in zip(soft, grad)])
    np.testing.assert_allclose(out["dP"], expected, rtol=1e-10, atol=1e-14)


def test_one_hot_labels_build_the_target():
    program = lower("loss", _cross_entropy_program_eqs(), N, leading=("X", "labels"),
                    keep=frozenset(), one_hot={"Y": "labels"})
    arrays = _inputs(5)
    labels = np.array([0, 2, 1, 1, 0, 2, 2, 0, 1])
    arrays["labels"] = labels
    value, _ = _run(program, arrays)
    logits = arrays["X"] @ arrays["W1"].T + arrays["b1"]
    expected = -special.log_softmax(logits, axis=1)[np.arange(BATCH), labels].mean()
    assert value == pytest.approx(expected, rel=1e-12)


def _cross_entropy_program_eqs():
    return [_eq(Z, W * X + b * sp.OneMatrix(1, N)), _eq(S, Softmax(Z)),
            _eq(L, Total(Elementwise(sp.Lambda((v, w), -w * sp.log(v)), S, Y)) / N)]


def test_scalars_become_arguments():
    lr = sp.Symbol("lr", real=True)
    P = sp.MatrixSymbol("P", OUT, IN)
    dP = sp.MatrixSymbol("dP", OUT, IN)
    eqs = [_eq(P, Elementwise(sp.Lambda((v, w), v - lr * w), P, dP))]
    program = lower("update", eqs, N, leading=("P", "dP"), keep=frozenset({"P"}))
    assert program.scalars == ("lr",)
    rng = np.random.default_rng(6)
    p, g = rng.standard_normal((OUT, IN)), rng.standard_normal((OUT, IN))
    expected = p - 0.25 * g
    _run(program, {"P": p, "dP": g}, {"lr": 0.25})
    np.testing.assert_allclose(p, expected, rtol=1e-15)


def test_a_weight_of_one_input_is_stored_as_a_matrix():
    """W (3×1) is shaped like a bias b (3×1), but a product needs it 2-D; b stays 1-D."""
    W1, X1, G1 = sp.MatrixSymbol("W1", OUT, 1), sp.MatrixSymbol("X", 1, N), sp.MatrixSymbol(
        "dW1", OUT, 1)
    lr = sp.Symbol("lr", real=True)
    eqs = [_eq(Z, W1 * X1 + b * sp.OneMatrix(1, N)), _eq(G1, dZ * X1.T),
           _eq(W1, Elementwise(sp.Lambda((v, w), v - lr * w), W1, G1))]
    program = lower("f", eqs, N, leading=("X", "dZ1"), keep=frozenset({"Z1", "W1"}))
    assert program.buffers["W1"].shape == (OUT, 1)
    assert program.buffers["dW1"].shape == (OUT, 1)
    assert program.buffers["b1"].shape == (OUT,)
    rng = np.random.default_rng(8)
    x, grad = rng.standard_normal((BATCH, 1)), rng.standard_normal((BATCH, OUT))
    weight, bias = rng.standard_normal((OUT, 1)), rng.standard_normal(OUT)
    logits = x @ weight.T + bias
    updated = weight - 0.5 * (grad.T @ x)
    _, out = _run(program, {"X": x, "dZ1": grad, "W1": weight, "b1": bias}, {"lr": 0.5})
    np.testing.assert_allclose(out["Z1"], logits, rtol=1e-13)
    np.testing.assert_allclose(out["W1"], updated, rtol=1e-13)


def test_a_sum_of_products_and_biases_is_each_term_then_one_loop():
    """``dW = dZ·Xᵀ + dV·Uᵀ`` (a parameter used twice) and ``Z = W·X + V·X + b·1ᵀ``: every
    product into its own buffer, then one entry-wise sum; checked against numpy."""
    V, dV = sp.MatrixSymbol("V", OUT, IN), sp.MatrixSymbol("dV", OUT, N)
    U = sp.MatrixSymbol("U", IN, N)
    eqs = [_eq(Z, W * X + V * X + b * sp.OneMatrix(1, N)),
           _eq(dW, dZ * X.T + dV * U.T), _eq(db, dZ * sp.OneMatrix(N, 1) + dV * sp.OneMatrix(N, 1))]
    program = lower("f", eqs, N, leading=("X",), keep=frozenset({"Z1", "dW1", "db1"}))
    assert sum(isinstance(op, MatMul) for op in program.ops) == 4
    rng = np.random.default_rng(3)
    x, u = rng.standard_normal((BATCH, IN)), rng.standard_normal((BATCH, IN))
    weight, other = rng.standard_normal((OUT, IN)), rng.standard_normal((OUT, IN))
    bias, grad, grad2 = (rng.standard_normal(OUT), rng.standard_normal((BATCH, OUT)),
                         rng.standard_normal((BATCH, OUT)))
    _, out = _run(program, {"X": x, "U": u, "W1": weight, "V": other, "b1": bias,
                            "dZ1": grad, "dV": grad2})
    np.testing.assert_allclose(out["Z1"], x @ weight.T + x @ other.T + bias, rtol=1e-13)
    np.testing.assert_allclose(out["dW1"], grad.T @ x + grad2.T @ u, rtol=1e-13)
    np.testing.assert_allclose(out["db1"], grad.sum(0) + grad2.sum(0), rtol=1e-13)


@pytest.mark.parametrize("eq", [
    _eq(Z, W * X * sp.MatrixSymbol("Q", N, N)),
    _eq(sp.MatrixSymbol("T", IN, OUT), Softmax(sp.MatrixSymbol("U", IN, OUT))),
])
def test_unsupported_forms_raise_type_errors(eq):
    with pytest.raises(TypeError):
        lower("f", [eq], N, leading=("X",))
