"""codegen.fusion.fuse_gemm_updates and the CPU's products: a product read only by an update
``P = P + c·G`` becomes one GEMM adding into P; both BLAS paths (`codegen.blas`) compared with
NumPy's matmul in float64.  `inline_thin_products`: a product of a few terms summed inside
the loop that reads it, against NumPy.  `sum_columns_in_loops`: a column sum done in the loop
that writes its rows, serially and on the threads, against NumPy and the separate sum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

from codegen import blas
from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.fusion import fuse_gemm_updates, inline_thin_products, sum_columns_in_loops
from codegen.ir import Buffer, CheckFinite, I, J, Loop, MatMul, Program, RowSum

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


BLAS = [pytest.param("scipy", id="scipy"), pytest.param(
    "numpy-openblas64", id="numpy-openblas64", marks=pytest.mark.skipif(
        blas.numpy_openblas() is None, reason="this NumPy bundles no scipy-openblas64"))]


def _gemm_module(ta, tb, a_shape, b_shape, rows, cols, name, backend, scaled=True):
    scale = sp.Symbol("k") if scaled else None
    program = Program("step", (MatMul("C", ("A", ta), ("B", tb), "C += k*A*B", scale),),
                      ("A", "B", "C"), ("k",) if scaled else (),
                      {"A": Buffer("A", a_shape), "B": Buffer("B", b_shape),
                       "C": Buffer("C", (rows, cols))})
    source = render_module([program], N, real=name, blas=backend)
    assert ("_gemm(" in source) == (backend == "numpy-openblas64")
    return load_module(source, {"test": "gemm", "dtype": name})


@pytest.mark.parametrize("backend", BLAS)
@pytest.mark.parametrize("scaled", [True, False], ids=["C+=k*A*B", "C=A*B"])
@pytest.mark.parametrize("dtype, ta, tb", [
    (d, ta, tb) for d, (ta, tb) in itertools.product(
        (np.float32, np.float64), itertools.product((False, True), repeat=2))])
def test_products_match_numpy(dtype, ta, tb, scaled, backend):
    """Every transpose, both dtypes, both BLAS libraries, with and without the scaled add,
    for matrices and single rows or columns (batch 1 takes GEMV); a plain product
    overwrites C (NaN there must not leak), and an empty inner dimension (an empty data
    shard) gives exactly C or zeros."""
    name = np.dtype(dtype).name
    rng = np.random.default_rng(0)
    # a matrix, one row and one column (GEMV), both, and an empty inner dimension
    for rows, inner, cols in ((3, 7, 5), (1, 7, 5), (3, 7, 1), (1, 7, 1), (4, 0, 2), (1, 0, 3)):
        a_shape = (inner, rows) if ta else (rows, inner)
        b_shape = (cols, inner) if tb else (inner, cols)
        module = _gemm_module(ta, tb, a_shape, b_shape, rows, cols, name, backend, scaled)
        A, B, C = (rng.standard_normal(s).astype(dtype) for s in (a_shape, b_shape, (rows, cols)))
        product = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
        if scaled:
            expected = C.astype(np.float64) + 0.25 * product
            module.step(A, B, C, dtype(0.25))
        else:
            expected, C[:] = product, np.nan
            module.step(A, B, C)
        np.testing.assert_allclose(C, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.skipif(blas.numpy_openblas() is None, reason="no bundled scipy-openblas64")
def test_cblas_product_refuses_arrays_of_another_dtype():
    """The CBLAS call reads raw pointers: float64 arrays in a float32 module are refused,
    not read as garbage."""
    module = _gemm_module(False, False, (2, 3), (3, 4), 2, 4, "float32", "numpy-openblas64")
    with pytest.raises(TypeError, match="dtype"):
        module.step(np.ones((2, 3)), np.ones((3, 4)), np.zeros((2, 4)), 1.0)


def test_blas_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv(blas.ENV, "scipy")
    assert blas.choice() == "scipy"
    monkeypatch.setenv(blas.ENV, "fortran")
    with pytest.raises(ValueError, match="SYMNET_BLAS"):
        blas.choice()
    monkeypatch.setenv(blas.ENV, "numpy")
    if blas.numpy_openblas() is None:
        with pytest.raises(RuntimeError, match="scipy-openblas64"):
            blas.choice()
    else:
        assert blas.choice() == "numpy-openblas64"


@pytest.mark.parametrize("backend", BLAS)
def test_products_load_from_numbas_cache_in_a_fresh_process(tmp_path, backend):
    """The machine code names the BLAS routine by symbol, never by address: a second
    process loads it from the cache (no compile) and gets the same product."""
    import os
    import subprocess
    import sys
    import textwrap

    ta, tb, a_shape, b_shape = True, False, (6, 3), (6, 4)
    script = textwrap.dedent(f"""
        import numpy as np, sympy as sp
        from codegen.cache import load_module
        from codegen.cpu import render_module
        from codegen.ir import Buffer, MatMul, Program
        N = sp.Symbol("N", integer=True, positive=True)
        program = Program("step", (MatMul("C", ("A", {ta}), ("B", {tb}), "C += k*A*B",
                                          sp.Symbol("k")),), ("A", "B", "C"), ("k",),
                          {{"A": Buffer("A", {a_shape}), "B": Buffer("B", {b_shape}),
                            "C": Buffer("C", (3, 4))}})
        module = load_module(render_module([program], N, real="float64", blas={backend!r}),
                             {{"test": "gemm cache"}})
        rng = np.random.default_rng(1)
        A, B = rng.standard_normal({a_shape}), rng.standard_normal({b_shape})
        C = np.zeros((3, 4))
        module.step(A, B, C, 0.5)
        assert np.allclose(C, 0.5 * A.T @ B, rtol=1e-13), C
        print(sum(module.step.stats.cache_hits.values()))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path / "cache")}
    hits = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        hits.append(int(run.stdout.split()[-1]))
    assert hits == [0, 1]  # compiled once, then loaded


def test_a_scale_only_the_fused_product_reads_is_a_parameter():
    """With the update fused into the GEMM, the scale's symbols live only in the product's
    ``scale``: they are still the program's scalars (else the kernel names an unbound lr)."""
    from codegen.expr import Elementwise
    from codegen.lower import lower

    a, b = sp.Symbol("a"), sp.Symbol("b")
    A, B = sp.MatrixSymbol("A", 3, 4), sp.MatrixSymbol("B", 4, 5)
    Gm, Pm = sp.MatrixSymbol("G", 3, 5), sp.MatrixSymbol("P", 3, 5)
    update = Elementwise(sp.Lambda((a, b), a - lr * b), Pm, Gm)
    program = lower("step", [sp.Eq(Gm, A * B, evaluate=False), sp.Eq(Pm, update)], N,
                    keep=frozenset({"P"}), gemm_updates=True)
    assert [type(op) for op in program.ops] == [MatMul] and program.scalars == ("lr",)
    module = load_module(render_module([program], N), {"test": "fused scale"})
    rng = np.random.default_rng(1)
    arrays = {n: rng.standard_normal(s) for n, s in (("A", (3, 4)), ("B", (4, 5)), ("P", (3, 5)))}
    expected = arrays["P"] - 0.5 * arrays["A"] @ arrays["B"]
    module.step(*(arrays[n] for n in program.arguments), 0.5)
    np.testing.assert_allclose(arrays["P"], expected, rtol=1e-12)


def _thin(ta, tb, k=3, n=5):
    """``G = op(A)·op(B)`` (N × n, ``k`` terms) read by ``Z = G ⊙ [H > 0]``, and buffers."""
    buffers = {"A": Buffer("A", (k, N) if ta else (N, k)),
               "B": Buffer("B", (n, k) if tb else (k, n)),
               "G": Buffer("G", (N, n)), "H": Buffer("H", (N, n)), "Z": Buffer("Z", (N, n))}
    H = sp.IndexedBase("H")
    loop = Loop((N, n), (("Z", G[I, J] * sp.Heaviside(H[I, J], 0)),), formulas=("Z = ...",))
    return (MatMul("G", ("A", ta), ("B", tb), "G = A*B"), loop), buffers


@pytest.mark.parametrize("ta,tb", list(itertools.product((False, True), repeat=2)))
def test_a_thin_product_is_summed_in_the_loop_that_reads_it(ta, tb):
    ops, buffers = _thin(ta, tb)
    (loop,) = inline_thin_products(ops, {"Z"}, buffers, 4)
    assert isinstance(loop, Loop) and loop.reads == {"A", "B", "H"}
    assert loop.formulas == ("G = A*B", "Z = ...")
    program = Program("step", (loop,), ("A", "B", "H", "Z"), (), buffers)
    module = load_module(render_module([program], N, real="float64"),
                         {"test": "thin", "ta": ta, "tb": tb})
    rng = np.random.default_rng(1)
    for rows in (1, 7):
        A = rng.standard_normal((3, rows) if ta else (rows, 3))
        B = rng.standard_normal((5, 3) if tb else (3, 5))
        H = rng.standard_normal((rows, 5))
        Z = np.full((rows, 5), np.nan)
        module.step(A, B, H, Z)
        expected = ((A.T if ta else A) @ (B.T if tb else B)) * (H > 0)
        np.testing.assert_allclose(Z, expected, rtol=1e-13, atol=1e-15)


def _read_twice(ops, buffers):
    return ops + (Loop((N, 5), (("Y", G[I, J] + 1),)),), buffers


def _read_in_a_row(ops, buffers):
    return (ops[0], Loop((N, 5), (("Z", G[I, 0] * G[I, J]),))), buffers


def _operand_written_between(ops, buffers):
    return (ops[0], Loop((N, 3), (("A", sp.IndexedBase("A")[I, J] * 2),)), ops[1]), buffers


@pytest.mark.parametrize("change", [_read_twice, _read_in_a_row, _operand_written_between])
def test_a_thin_product_stays_a_product_where_inlining_would_change_the_result(change):
    ops, buffers = change(*_thin(False, False))
    assert inline_thin_products(ops, {"Z", "Y"}, buffers, 4) == ops


def test_only_products_of_a_constant_few_terms_are_inlined():
    ops, buffers = _thin(False, False, k=5)
    assert inline_thin_products(ops, {"Z"}, buffers, 4) == ops  # 5 terms > 4
    assert len(inline_thin_products(ops, {"Z"}, buffers, 5)) == 1
    assert inline_thin_products(ops, {"Z", "G"}, buffers, 5) == ops  # the product is kept
    batch_inner = {**buffers, "A": Buffer("A", (N, N))}  # a weight gradient's inner batch
    assert inline_thin_products(ops, {"Z"}, batch_inner, 16) == ops


def test_two_thin_products_read_by_one_loop_are_both_summed():
    """``dZ1 = Vᵀ·dH2 + Wᵀ·dH1`` (a GLU's input gradient): both products become the loop's
    sums; neither is lost."""
    E, F = sp.IndexedBase("E"), sp.IndexedBase("F")
    buffers = {"A": Buffer("A", (N, 3)), "B": Buffer("B", (3, 5)), "C": Buffer("C", (N, 2)),
               "D": Buffer("D", (2, 5)), "E": Buffer("E", (N, 5)), "F": Buffer("F", (N, 5)),
               "Z": Buffer("Z", (N, 5))}
    ops = (MatMul("E", ("A", False), ("B", False), "E = A*B"),
           MatMul("F", ("C", False), ("D", False), "F = C*D"),
           Loop((N, 5), (("Z", E[I, J] + 2 * F[I, J]),)))
    (loop,) = inline_thin_products(ops, {"Z"}, buffers, 4)
    assert loop.reads == {"A", "B", "C", "D"}
    program = Program("step", (loop,), ("A", "B", "C", "D", "Z"), (), buffers)
    module = load_module(render_module([program], N, real="float64"), {"test": "thin-two"})
    rng = np.random.default_rng(4)
    A, B, C, D = (rng.standard_normal(s) for s in ((6, 3), (3, 5), (6, 2), (2, 5)))
    Z = np.full((6, 5), np.nan)
    module.step(A, B, C, D, Z)
    np.testing.assert_allclose(Z, A @ B + 2 * (C @ D), rtol=1e-13, atol=1e-15)


def _dz_and_bias_gradient(n=5):
    """``Z = G ⊙ [H > 0]``, ``Y = 2·G`` and ``b = Z·1`` (``c = Y·1``), as a bias gradient
    beside its ``dZ``, and buffers."""
    H = sp.IndexedBase("H")
    buffers = {name: Buffer(name, (N, n)) for name in "GHZY"}
    buffers |= {"b": Buffer("b", (n,)), "c": Buffer("c", (n,))}
    loop = Loop((N, n), (("Z", G[I, J] * sp.Heaviside(H[I, J], 0)), ("Y", 2 * G[I, J])),
                formulas=("Z = ...",))
    return (loop, RowSum("b", "Z", "b = Z*1"), RowSum("c", "Y", "c = Y*1")), buffers


def _run(ops, buffers, parallel, rows, seed=2):
    program = Program("step", ops, ("G", "H", "Z", "Y", "b", "c"), (), buffers)
    source = render_module([program], N, parallel=parallel, real="float64",
                           min_work=0 if parallel else 2 * 131072)
    module = load_module(source, {"test": "totals", "parallel": parallel, "n": len(ops)})
    rng = np.random.default_rng(seed)
    G_, H_ = rng.standard_normal((rows, 5)), rng.standard_normal((rows, 5))
    out = {k: np.full(s, np.nan) for k, s in (("Z", (rows, 5)), ("Y", (rows, 5)),
                                              ("b", 5), ("c", 5))}
    module.step(G_, H_, out["Z"], out["Y"], out["b"], out["c"])
    return G_, H_, out, source


@pytest.mark.parametrize("parallel", [False, True])
def test_a_column_sum_is_summed_in_the_loop_that_writes_its_rows(parallel):
    ops, buffers = _dz_and_bias_gradient()
    (loop,) = sum_columns_in_loops(ops, {"Z", "Y", "b", "c"})
    assert loop.totals == (("b", "Z"), ("c", "Y")) and loop.writes == {"Z", "Y", "b", "c"}
    assert loop.formulas == ("Z = ...", "b = Z*1", "c = Y*1")
    for rows in (1, 7, 301):
        G_, H_, out, source = _run((loop,), buffers, parallel, rows)
        assert ("_parts_b[_c, j] += Z[i, j]" in source) == parallel
        Z = G_ * (H_ > 0)
        np.testing.assert_array_equal(out["Z"], Z)
        np.testing.assert_array_equal(out["Y"], 2 * G_)
        np.testing.assert_allclose(out["b"], Z.sum(axis=0), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(out["c"], 2 * G_.sum(axis=0), rtol=1e-13, atol=1e-14)
        # serially the sums run in the separate sum's order: the same bits
        *_, alone, _ = _run(ops, buffers, False, rows)
        if not parallel:
            for name in "ZYbc":
                assert np.array_equal(out[name], alone[name]), name


def _sum_read_between(ops, buffers):
    return (ops[0], Loop((N, 5), (("Y", sp.IndexedBase("b")[J] * 2),)), ops[1]), buffers


def _sum_written_between(ops, buffers):
    return (ops[0], Loop((5,), (("b", sp.IndexedBase("H")[0, I]),)), ops[1]), buffers


def _rows_from_a_product(ops, buffers):
    return (MatMul("Z", ("G", True), ("H", False), "Z = G.T*H"), ops[1]), buffers


def _loop_reads_the_sum(ops, buffers):
    loop = Loop((N, 5), (("Z", G[I, J] * sp.IndexedBase("b")[J]),))
    return (loop, ops[1]), buffers


@pytest.mark.parametrize("change", [_sum_read_between, _sum_written_between,
                                    _rows_from_a_product, _loop_reads_the_sum])
def test_a_column_sum_stays_apart_where_moving_it_would_change_the_result(change):
    ops, buffers = change(*_dz_and_bias_gradient())
    fused = sum_columns_in_loops(ops, {"Z", "Y", "b", "c"})
    assert sum(isinstance(op, RowSum) for op in fused) == sum(
        isinstance(op, RowSum) for op in ops)
