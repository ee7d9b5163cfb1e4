"""Kernels rendered with ``flush=True`` (`codegen.flush`): denormal results and inputs are 0
on every thread the kernel runs on, threaded loops still run each iteration once, and the
calling thread and Numba's threads are back in IEEE mode after the call.

Results are compared as bits: with DAZ on, a float comparison reads a denormal as 0."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import sympy as sp
from numba import njit, prange

from codegen import flush, fpenv
from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.ir import Buffer, Loop, Program, Reduce

pytestmark = pytest.mark.skipif(not fpenv.X86, reason="MXCSR is x86's")

N = sp.Symbol("N")
TINY = np.finfo(np.float32).tiny  # the smallest normal float32
QUARTER = np.array([TINY / 4], np.float32).view(np.int32)[0]  # its quarter's bits (denormal)
THREADS = numba.config.NUMBA_NUM_THREADS


def _bits(values) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1).view(np.int32)


@njit
def _quarter(x):
    return x / np.float32(4)


@njit(parallel=True)
def _quarters(x, out):
    for i in prange(out.size):
        out[i] = x[i] / np.float32(4)


def _ieee_everywhere() -> bool:
    """Whether this thread and every Numba thread compute a denormal quarter of TINY."""
    out = np.zeros(64 * THREADS, np.float32)
    _quarters(np.full(out.size, TINY, np.float32), out)
    return bool((_bits(out) == QUARTER).all()) and _bits(_quarter(np.float32(TINY)))[0] == QUARTER \
        and _bits(np.float32(TINY) / np.float32(4))[0] == QUARTER


def _quarter_program() -> Program:
    """``out = x / 4`` entry-wise, and ``total = Σ x / 4``."""
    x, i, j = sp.IndexedBase("x"), sp.Symbol("i"), sp.Symbol("j")
    ops = (Loop((N, 3), (("out", x[i, j] / 4),), formulas=("out = x/4",)),
           Reduce("total", (N, 3), x[i, j] / 4, sp.Integer(1), "total = sum(x/4)"))
    return Program("quarters", ops, ("x", "out"), (),
                   {"x": Buffer("x", (N, 3)), "out": Buffer("out", (N, 3))}, returns="total")


def _module(flushing: bool, parallel: bool):
    source = render_module([_quarter_program()], N, parallel, real="float32", min_work=0,
                           flush=flushing)
    return load_module(source, {"test": "flush", "flush": flushing, "parallel": parallel})


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "threads"])
def test_flushed_kernel_flushes_on_every_thread_and_restores_ieee(parallel):
    if parallel and THREADS < 2:
        pytest.skip("one thread")
    module = _module(True, parallel)
    x = np.full((64 * THREADS, 3), TINY, np.float32)
    out = np.full_like(x, np.nan)
    total = module.quarters(x, out)
    assert (_bits(out) == 0).all()  # each thread's chunk flushed its quarters
    # the sum runs in float64, where TINY/4 is normal: every entry counted once
    assert total == pytest.approx(x.size * float(TINY) / 4, rel=1e-5)
    assert _ieee_everywhere()
    denormal = np.full_like(x, TINY / 4)  # denormal inputs are read as zero
    out[:] = np.nan
    assert module.quarters(denormal, out) == 0.0
    assert (_bits(out) == 0).all() and _ieee_everywhere()


def test_unflushed_kernel_keeps_ieee_denormals():
    module = _module(False, THREADS > 1)
    x = np.full((64 * THREADS, 3), TINY, np.float32)
    out = np.zeros_like(x)
    total = module.quarters(x, out)
    assert (_bits(out) == QUARTER).all()
    assert total == pytest.approx(x.size * float(TINY) / 4, rel=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 5, 101])
def test_chunks_run_every_iteration_once(n, threads):
    body = flush.chunked(["for i in prange(n):", "    out[i] += i + 1", "total = out.sum()"],
                         "threads")
    text = "\n".join(["def f(out, n, threads):", *("    " + line for line in body),
                      "    return total"])
    scope = {"prange": prange, "np": np, "_flush_on": fpenv.flush_on,
             "_restore": fpenv.restore}
    exec(compile(text, "<chunked>", "exec"), scope)
    f = njit(parallel=True)(scope["f"])
    out = np.zeros(n)
    assert f(out, n, threads) == n * (n + 1) / 2
    np.testing.assert_array_equal(out, np.arange(1, n + 1))


def test_scoped_restores_before_every_return():
    body = flush.scoped(["if x:", "    return 1", "y = 2", "return y"])
    assert body == ["_fp_mode = _flush_on()", "if x:",
                    "    _restore(_fp_mode)", "    return 1", "y = 2",
                    "_restore(_fp_mode)", "return y"]
    assert flush.scoped(["a = 1"])[-1] == "_restore(_fp_mode)"
