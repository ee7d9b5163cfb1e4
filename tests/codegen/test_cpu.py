"""codegen.cpu: the rendered @njit source computes what the equations say.

Kernels with common subexpressions (GELU), constant branches (LeakyReLU's derivative) and
loop invariants (Adam's bias correction) are compiled and compared with numpy / scipy
(parallel modules: tests/codegen/test_parallel.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.expr import Elementwise
from codegen.lower import lower

special = pytest.importorskip("scipy.special")

N = sp.Symbol("N", integer=True, positive=True)
BATCH, IN, OUT = 11, 3, 4
W = sp.MatrixSymbol("W1", OUT, IN)
b = sp.MatrixSymbol("b1", OUT, 1)
X = sp.MatrixSymbol("X", IN, N)
Z = sp.MatrixSymbol("Z1", OUT, N)
A = sp.MatrixSymbol("A1", OUT, N)
G = sp.MatrixSymbol("G", OUT, N)
dZ = sp.MatrixSymbol("dZ1", OUT, N)
v, g = sp.symbols("v g", real=True)


def _eq(lhs, rhs):
    return sp.Eq(lhs, rhs, evaluate=False)


def _compile(program, parallel=False):
    source = render_module([program], N, parallel)
    return getattr(load_module(source, {"test": "cpu", "parallel": parallel}), program.name)


def _call(program, arrays, parallel=False):
    fn = _compile(program, parallel)
    args = []
    for name in program.arguments:
        if name not in arrays:
            shape = [BATCH if d == N else int(d) for d in program.buffers[name].shape]
            arrays[name] = np.full(shape, np.nan)
        args.append(arrays[name])
    fn(*args)
    return arrays


def _linear_inputs(seed):
    rng = np.random.default_rng(seed)
    arrays = {"X": rng.standard_normal((BATCH, IN)) * 2, "W1": rng.standard_normal((OUT, IN)),
              "b1": rng.standard_normal(OUT)}
    logits = arrays["X"] @ arrays["W1"].T + arrays["b1"]
    return arrays, logits


def test_subexpressions_of_a_fused_register_are_computed_after_it():
    """GELU after the bias: ``Z/2`` is shared, and Z only exists inside the loop."""
    gelu = v * (1 + sp.erf(v / sp.sqrt(2))) / 2
    eqs = [_eq(Z, W * X + b * sp.OneMatrix(1, N)), _eq(A, Elementwise(sp.Lambda(v, gelu), Z))]
    program = lower("forward", eqs, N, leading=("X",), keep=frozenset({"A1"}))
    arrays, logits = _linear_inputs(0)
    out = _call(program, arrays)
    expected = logits * (1 + special.erf(logits / np.sqrt(2))) / 2
    np.testing.assert_allclose(out["A1"], expected, rtol=1e-13, atol=1e-15)


def test_piecewise_with_constant_branches():
    """LeakyReLU's derivative: constant branches must stay inside the Piecewise."""
    slope = sp.Rational(1, 10)
    fprime = sp.Piecewise((1, v > 0), (slope, True))
    eqs = [_eq(dZ, Elementwise(sp.Lambda((g, v), g * fprime), G, Z))]
    program = lower("backward", eqs, N, leading=("G", "Z1"), keep=frozenset({"dZ1"}))
    rng = np.random.default_rng(1)
    grad, logits = rng.standard_normal((BATCH, OUT)), rng.standard_normal((BATCH, OUT))
    out = _call(program, {"G": grad, "Z1": logits})
    np.testing.assert_allclose(out["dZ1"], grad * np.where(logits > 0, 1.0, 0.1), rtol=1e-15)


def test_loop_invariants_are_hoisted_and_correct():
    """Adam's step: ``1 − β₁ᵗ`` does not depend on the entry; computed once, outside."""
    beta1, beta2, lr, eps, t = sp.symbols("beta1 beta2 lr eps t", real=True)
    P, dP, m, s = (sp.MatrixSymbol(n, OUT, IN) for n in ("P", "dP", "mP", "vP"))
    a, c = sp.symbols("a c", real=True)
    eqs = [
        _eq(m, Elementwise(sp.Lambda((a, c), beta1 * a + (1 - beta1) * c), m, dP)),
        _eq(s, Elementwise(sp.Lambda((a, c), beta2 * a + (1 - beta2) * c**2), s, dP)),
        _eq(P, Elementwise(sp.Lambda((v, a, c), v - lr * (a / (1 - beta1**t))
                                     / (sp.sqrt(c / (1 - beta2**t)) + eps)), P, m, s)),
    ]
    program = lower("update", eqs, N, leading=("P", "dP", "mP", "vP"),
                    keep=frozenset({"P", "mP", "vP"}))
    source = render_module([program], N)
    body = source[source.index("def update"):]
    loop_start = body.index("for i in")
    assert "beta1**t" in body[:loop_start]  # hoisted above the loop
    assert "beta1**t" not in body[loop_start:]
    fn = load_module(source, {"test": "cpu-adam"}).update
    rng = np.random.default_rng(2)
    p, grad = rng.standard_normal((OUT, IN)), rng.standard_normal((OUT, IN))
    m0, v0 = rng.standard_normal((OUT, IN)) * 0.1, rng.random((OUT, IN)) * 0.1
    hyper = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "lr": 0.01, "t": 3}
    m1 = hyper["beta1"] * m0 + (1 - hyper["beta1"]) * grad
    v1 = hyper["beta2"] * v0 + (1 - hyper["beta2"]) * grad**2
    expected = p - hyper["lr"] * (m1 / (1 - 0.9**3)) / (np.sqrt(v1 / (1 - 0.999**3)) + 1e-8)
    arrays = [p, grad, m0.copy(), v0.copy()]
    fn(*arrays, *[hyper[name] for name in program.scalars])
    np.testing.assert_allclose(arrays[0], expected, rtol=1e-13)
    np.testing.assert_allclose(arrays[2], m1, rtol=1e-14)
    np.testing.assert_allclose(arrays[3], v1, rtol=1e-14)


def test_float32_loop_invariants_stay_float32():
    # Numba types `1 - beta1` as float64 (int minus float32); one float64 factor would
    # promote the whole float32 Adam loop.  Numba's own type inference is the judge.
    import io
    import re

    from symnet.backends import kernels

    model = sn.Sequential(sn.Linear(3, 2))
    unit = kernels.optimizer_unit(sn.optim.Adam(model.parameters()), np.float32)
    fn = unit.functions["update_matrix"]
    arrays = [np.zeros((2, 3), np.float32) for _ in unit.programs["update_matrix"].arguments]
    scalars = [np.float32(0.9) if s != "t" else 1 for s in unit.programs["update_matrix"].scalars]
    fn(*arrays, *scalars)
    listing = io.StringIO()
    fn.inspect_types(file=listing)
    # Numba annotates each register it typed: `#   t_mhatP = k2 * t_mP  :: float32`.
    registers = re.findall(r"#\s+(t_\w+) = .*::\s*(\w+)$", listing.getvalue(), re.M)
    assert registers, "Numba's annotation shows no loop registers"
    assert all(kind == "float32" for _, kind in registers), registers
