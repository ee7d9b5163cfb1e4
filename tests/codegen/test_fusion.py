"""codegen.fusion.fuse_gemm_updates and the CPU's ``_gemm_add``: a product read only by an
update ``P = P + c·G`` becomes one GEMM adding into P; compared with NumPy's matmul."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.fusion import fuse_gemm_updates
from codegen.ir import Buffer, CheckFinite, Loop, MatMul, Program
from codegen.lower import I, J

N = sp.Symbol("N", integer=True, positive=True)
lr = sp.Symbol("lr")
P, G, M = (sp.IndexedBase(n) for n in ("P", "G", "M"))


def _update(target="P", gradient="G", scale=-lr):
    return Loop((3, 5), ((target, sp.IndexedBase(target)[I, J]
                          + scale * sp.IndexedBase(gradient)[I, J]),), formulas=("P = ...",))


def _product(out="G", a=("A", True), b=("B", False)):
    return MatMul(out, a, b, f"{out} = A.T*B")


def test_a_product_only_the_update_reads_becomes_one_scaled_gemm():
    fused = fuse_gemm_updates((_product(), _update()), keep={"P"})
    assert fused == (MatMul("P", ("A", True), ("B", False), "G = A.T*B\nP = ...", -lr),)


@pytest.mark.parametrize("ops, keep", [
    # a finite check reads the gradient too: it must be computed
    ((_product(), CheckFinite("L", (("G", 2),)), _update()), {"P"}),
    # momentum: the update reads a velocity, not a plain scaled gradient
    ((_product(), Loop((3, 5), (("P", P[I, J] - lr * G[I, J] * M[I, J]),))), {"P"}),
    # an operand is overwritten between the product and the update
    ((_product(), MatMul("A", ("C", False), ("D", False)), _update()), {"P"}),
    # the gradient is kept (an output the caller reads)
    ((_product(), _update()), {"P", "G"}),
])
def test_no_fusion_where_it_would_change_the_result(ops, keep):
    assert fuse_gemm_updates(ops, keep) == ops


@pytest.mark.parametrize("dtype, ta, tb", [
    (d, ta, tb) for d, (ta, tb) in itertools.product(
        (np.float32, np.float64), itertools.product((False, True), repeat=2))])
def test_gemm_add_matches_numpy(dtype, ta, tb):
    rows, inner, cols = 3, 7, 5
    a_shape = (inner, rows) if ta else (rows, inner)
    b_shape = (cols, inner) if tb else (inner, cols)
    program = Program("step", (MatMul("C", ("A", ta), ("B", tb), "C += k*A*B", sp.Symbol("k")),),
                      ("A", "B", "C"), ("k",),
                      {"A": Buffer("A", a_shape), "B": Buffer("B", b_shape),
                       "C": Buffer("C", (rows, cols))})
    name = np.dtype(dtype).name
    module = load_module(render_module([program], N, real=name), {"test": "gemm_add",
                                                                 "dtype": name})
    rng = np.random.default_rng(0)
    A, B, C = (rng.standard_normal(s).astype(dtype) for s in (a_shape, b_shape, (rows, cols)))
    expected = C.astype(np.float64) + 0.25 * ((A.T if ta else A).astype(np.float64)
                                              @ (B.T if tb else B).astype(np.float64))
    module.step(A, B, C, dtype(0.25))
    np.testing.assert_allclose(C, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
