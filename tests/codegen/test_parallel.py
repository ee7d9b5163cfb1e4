"""Parallel CPU modules (`codegen.cpu`, ``parallel=True``) against the serial ones.

A train step rendered with every loop on the threads (``min_work=0``) is called on the same
arrays as the serial rendering.  Entry-wise loops, softmax rows and the one-hot rows compute
each entry alone, in the same order, so they must give the same bits; the reductions (bias
gradients as partial rows per block of rows, the loss as a ``prange`` sum) and the products
split into blocks add in another order, so they agree to rounding.  The products are left
whole below `SPLIT_MIN` multiply-adds, which keeps the entry-wise comparison exact in
`test_entrywise_work_gives_the_same_bits`; `test_split_products_match_numpy` splits them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen import blas
from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.ir import MatMul, Program
from symnet.backends import kernels
from symnet.symbolic.graph import N

ROOT = Path(__file__).resolve().parents[2]
ENTRYWISE = ("Y", "Z1", "A1", "Z2", "Yhat", "log_Yhat", "dZ2", "dA1", "dZ1")
PRODUCTS = ("dW1", "dW2")  # from identical inputs, left whole: the same bits too
REDUCED = ("db1", "db2")


def _step_module(model, loss, optimizer, parallel: bool, min_work: int = 0,
                 dtype=np.float64):
    derivation = sn.derive(model, loss, optimizer)
    program = kernels.step_program(derivation, loss)
    source = render_module([program], N, parallel, real=np.dtype(dtype).name,
                           min_work=min_work)
    module = load_module(source, {"test": "parallel", "parallel": parallel,
                                  "min_work": min_work, "dtype": np.dtype(dtype).name})
    return program, module.train_step, source


def _arguments(program, model, batch, rng, dtype=np.float64):
    params = dict(zip(("W1", "b1", "W2", "b2"), (p.data for p in model.parameters())))
    arrays = {"X": rng.standard_normal((batch, 6)).astype(dtype),
              "labels": rng.integers(0, 5, batch)}
    for name in program.arguments:
        if name in arrays:
            continue
        shape = kernels.concrete_shape(program.buffers[name].shape, batch)
        arrays[name] = params[name].copy() if name in params else \
            rng.random(shape).astype(dtype) * 0.1  # Adam's v must not be negative
    return arrays


def _run(fn, program, arrays, scalars):
    copies = {k: v.copy() for k, v in arrays.items()}
    value = fn(*(copies[n] for n in program.arguments), *scalars)
    return value, copies


def _model():
    sn.manual_seed(0)
    return sn.Sequential(sn.Linear(6, 24), sn.GELU(), sn.Linear(24, 5)).to(np.float64)


@pytest.mark.parametrize("batch", [1, 3, 37])
def test_entrywise_work_gives_the_same_bits(batch):
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=1e-2)
    loss = sn.CrossEntropyLoss()
    program, serial, _ = _step_module(model, loss, opt, parallel=False)
    _, wide, source = _step_module(model, loss, opt, parallel=True)
    assert source.count("prange(") >= 8, source
    arrays = _arguments(program, model, batch, np.random.default_rng(batch))
    scalars = [0.9, 0.999, 1e-8, 1e-2, 3]
    assert list(program.scalars) == ["beta1", "beta2", "eps", "lr", "t"]
    value, expected = _run(serial, program, arrays, scalars)
    wide_value, got = _run(wide, program, arrays, scalars)
    for name in ENTRYWISE + PRODUCTS:
        assert np.array_equal(got[name], expected[name]), name
    for name in REDUCED + ("W1", "mW1", "vW1", "b1", "mb1", "vb1"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-15,
                                   err_msg=name)
    np.testing.assert_allclose(wide_value, value, rtol=1e-12)
    # the weight update reads only entry-wise inputs that match: its bits match too
    assert np.array_equal(got["W2"], expected["W2"])


def test_reductions_add_every_row_once():
    """Bias gradients through partial rows: rows not divisible by the threads, fewer rows
    than threads, against NumPy's sum in float64."""
    model = _model()
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    loss = sn.CrossEntropyLoss()
    program, wide, _ = _step_module(model, loss, opt, parallel=True)
    for batch in (1, numba.get_num_threads() + 1, 101):
        arrays = _arguments(program, model, batch, np.random.default_rng(batch))
        value, got = _run(wide, program, arrays, [0.1])
        np.testing.assert_allclose(got["db1"], got["dZ1"].sum(axis=0), rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_allclose(got["db2"], got["dZ2"].sum(axis=0), rtol=1e-12,
                                   atol=1e-15)
        loss_value = -np.mean(np.log(got["Yhat"][np.arange(batch), arrays["labels"]]))
        np.testing.assert_allclose(value, loss_value, rtol=1e-12)


TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("real", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(70, 64, 66), (9, 300, 120), (1, 700, 400),
                                   (130, 1, 4000), (30, 40, 1000)])
def test_split_products_match_numpy(shape, real):
    """``C = op(A)·op(B)`` and ``C += s·op(A)·op(B)``, every transpose, in blocks of rows
    or of columns above SPLIT_MIN multiply-adds; GEMV shapes (m or n = 1) stay whole.  In
    float32 the blocks run symnet's GEMM where large enough (codegen/gemm.py), and
    30×40·1000's transposed A splits its inner dimension (`_gemm_inner`)."""
    if blas.choice() != "numpy-openblas64":
        pytest.skip("products are split only through NumPy's bundled OpenBLAS")
    m, n, k = shape
    tolerance = 1e-12 if real == "float64" else 2e-5
    ops, buffers, arguments = [], {}, []
    for t, (ta, tb) in enumerate(TRANSPOSES):
        a, b, c, d = f"A{t}", f"B{t}", f"C{t}", f"D{t}"
        buffers.update({a: sp.MatrixSymbol(a, *((k, m) if ta else (m, k))),
                        b: sp.MatrixSymbol(b, *((n, k) if tb else (k, n))),
                        c: sp.MatrixSymbol(c, m, n), d: sp.MatrixSymbol(d, m, n)})
        ops += [MatMul(c, (a, ta), (b, tb), f"{c} = {a}*{b}"),
                MatMul(d, (a, ta), (b, tb), f"{d} += 0.5*{a}*{b}", sp.Float(0.5))]
        arguments += [a, b, c, d]
    program = Program("products", tuple(ops), tuple(arguments), (), buffers)
    source = render_module([program], N, parallel=True, min_work=0, real=real)
    if real == "float32" and blas.gemm_choice() == "symnet":
        assert "_gemm_inner(A, B, tb, C, alpha, beta, threads)" in source
    module = load_module(source, {"test": "split products"})
    rng = np.random.default_rng(m + n + k)
    arrays, expected = [], []
    for ta, tb in TRANSPOSES:
        A = rng.standard_normal((k, m) if ta else (m, k)).astype(real)
        B = rng.standard_normal((n, k) if tb else (k, n)).astype(real)
        C, D = np.full((m, n), np.nan, real), rng.standard_normal((m, n)).astype(real)
        product = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B)
        arrays += [A, B, C, D]
        expected += [product, D + 0.5 * product]
    module.products(*arrays)
    for t in range(len(TRANSPOSES)):
        scale = np.abs(expected[2 * t]).max()
        np.testing.assert_allclose(arrays[4 * t + 2], expected[2 * t], rtol=tolerance,
                                   atol=tolerance * scale, err_msg=str(TRANSPOSES[t]))
        np.testing.assert_allclose(arrays[4 * t + 3], expected[2 * t + 1], rtol=tolerance,
                                   atol=tolerance * scale, err_msg=str(TRANSPOSES[t]))


def _trained(parallel, optimizer, steps=4, batch=300):
    sn.manual_seed(1)
    model = sn.Sequential(sn.Linear(40, 96), sn.ReLU(), sn.Linear(96, 7)).to(np.float64)
    opt = optimizer(model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt, parallel=parallel)
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((batch, 40)), rng.integers(0, 7, batch)
    return [step(X, y) for _ in range(steps)], model.state_dict(), step


@pytest.mark.parametrize("optimizer", [
    lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: sn.optim.Adam(p, lr=1e-2)], ids=["sgd-momentum", "adam"])
def test_steps_on_threads_train_as_the_serial_step(optimizer):
    """Whole steps, products split (300·96·40 multiply-adds), over several steps."""
    serial_losses, serial, _ = _trained(False, optimizer)
    for parallel in (True, "auto"):
        losses, state, step = _trained(parallel, optimizer)
        assert "prange(" in step.source(threaded=True) and "prange(" not in step.source()
        assert step.threads_from <= 300  # softmax rows of 7: threads from 293 rows
        np.testing.assert_allclose(losses, serial_losses, rtol=1e-10)
        for key, value in state.items():
            np.testing.assert_allclose(value, serial[key], rtol=1e-9, atol=1e-12,
                                       err_msg=key)
    assert serial_losses[-1] < serial_losses[0]


def test_one_thread_runs_the_serial_code():
    """With one thread an "auto" step takes every serial branch and leaves the products
    whole: the same bits as the serial step."""
    optimizer = lambda p: sn.optim.Adam(p, lr=1e-2)  # noqa: E731
    serial_losses, serial, _ = _trained(False, optimizer)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        losses, state, _ = _trained("auto", optimizer)
    finally:
        numba.set_num_threads(before)
    assert losses == serial_losses
    for key, value in state.items():
        assert np.array_equal(value, serial[key]), key


def test_auto_keeps_small_work_serial():
    model = sn.Sequential(sn.Linear(784, 128), sn.ReLU(), sn.Linear(128, 10))
    opt = sn.optim.Adam(model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)  # parallel="auto"
    assert step.threads_from == 1  # W1's update has 100,352 entries
    source = step.source(threaded=True)
    # batch-sized loops: both versions, chosen by size at run time (Z1 + b1 and ReLU: 128
    # entries a row, at cost 2 each)
    assert "if _nthreads > 1 and 256*N >= MIN_WORK:" in source
    # the bias gradients are summed in their dZ's loop, row by row as it is stored: on the
    # threads into one partial row per block, serially straight into db1
    db1 = source[source.index("# db1 = dZ1*1"):source.index("# mW1 = ")]
    assert "_parts_db1[_c, j] += dZ1[i, j]" in db1 and "        db1[j] += dZ1[i, j]" in db1
    assert "_column_sum(_parts_db1, 0, _parts_db1.shape[0], db1)" in db1
    # W1's update (100,352 entries) on the threads when there are several; b2's (10) never
    w1 = source[source.index("# W1 = W1 - lr*mhatW1"):]
    assert w1.splitlines()[5].strip() == "if _nthreads > 1:", w1[:400]
    b2 = source[source.index("# b2 = b2 - lr*mhatb2"):]
    assert "prange" not in b2


def test_openblas_gets_its_threads_back():
    """A step shares OpenBLAS's threads for its duration only, a refused step included."""
    if blas.choice() != "numpy-openblas64":
        pytest.skip("only NumPy's bundled OpenBLAS is shared")
    before = blas.get_threads()
    model = sn.Sequential(sn.Linear(3, 4), sn.Tanh(), sn.Linear(4, 2)).to(np.float64)
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1),
                      parallel=True)
    X = np.ones((5, 3))
    step(X, np.zeros((5, 2)))
    assert blas.get_threads() == before
    with pytest.raises(FloatingPointError):
        step(X, np.full((5, 2), 1e308))  # the loss overflows: refused
    assert blas.get_threads() == before


def test_set_num_threads_sets_numba_and_openblas():
    before = sn.get_num_threads()
    try:
        sn.set_num_threads(1)
        assert numba.get_num_threads() == 1 and sn.get_num_threads() == 1
        if blas.get_threads() is not None:
            assert blas.get_threads() == 1
    finally:
        sn.set_num_threads(before)
    assert sn.get_num_threads() == before
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            sn.set_num_threads(bad)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        sn.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)


def test_parallel_must_be_auto_true_or_false():
    model = sn.Sequential(sn.Linear(2, 2))
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    for bad in ("yes", 1, None, 2):
        with pytest.raises(ValueError, match="parallel="):
            sn.compile(model, sn.MSELoss(), opt, parallel=bad)


def test_a_parallel_step_loads_from_the_cache(tmp_path):
    """The thread count is read through a symbol, not a pointer: Numba caches the kernel
    (a NumbaWarning, turned into an error here, would say it cannot) and a fresh process
    loads it."""
    script = textwrap.dedent("""
        import warnings, numba, numpy as np, symnet as sn
        warnings.simplefilter("error", numba.NumbaWarning)
        model = sn.Sequential(sn.Linear(30, 64), sn.ReLU(), sn.Linear(64, 3))
        opt = sn.optim.Adam(model.parameters())
        step = sn.compile(model, sn.CrossEntropyLoss(), opt)
        step(np.ones((1024, 30), np.float32), np.zeros(1024, np.int64))
        assert step.threads_from <= 1024  # softmax over 1024 rows
        print(sum(step._cache[1].stats.cache_hits.values()))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert [run.stdout.split()[-1] for run in runs] == ["0", "1"]


def test_threaded_kernel_from_the_first_batch_openblas_would_thread():
    """6-24-5: Z1 = X·W1ᵀ is 144·N multiply-adds, which OpenBLAS threads from 9,216 (its
    GEMV threshold): from batch 64 the step takes the threaded kernel, below it the serial."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread in Numba's pool: no threaded kernel")
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(6, 24), sn.ReLU(), sn.Linear(24, 5))
    step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    assert step.threads_from == 64
    rng = np.random.default_rng(0)
    for batch, threaded in ((63, False), (64, True), (1, False)):
        step(rng.standard_normal((batch, 6)).astype(np.float32), rng.integers(0, 5, batch))
        assert (step._cache[1] is not step.function) == threaded, batch
