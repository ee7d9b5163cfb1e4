"""`sn.set_flush_denormal`: denormal results and inputs read as zero, in the calling thread
and in Numba's threads, and IEEE arithmetic back when it is turned off."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import njit, prange

import symnet as sn
from symnet.backends import denormals

TINY = np.finfo(np.float32).tiny  # the smallest normal float32
QUARTER = np.array([TINY / 4], np.float32).view(np.int32)[0]  # its quarter's bits (denormal)


def _bits(values) -> np.ndarray:
    """Values as their bits: with DAZ on, comparing a denormal float reads it as 0."""
    return np.asarray(values, np.float32).reshape(-1).view(np.int32)

pytestmark = pytest.mark.skipif(not denormals.X86, reason="MXCSR is x86's")


@njit
def _quarter(x):
    return x / np.float32(4)  # a denormal result, unless flushed


@njit
def _plus_zero(x):
    return x + np.float32(0)  # a denormal input, unless read as zero


@njit(parallel=True)
def _quarters(x, out):
    for i in prange(out.size):  # x[i]: a scalar would be divided once, before the threads
        out[i] = x[i] / np.float32(4)


@pytest.fixture
def flushing():
    assert sn.set_flush_denormal(True) is True
    try:
        yield
    finally:
        sn.set_flush_denormal(False)


def test_off_by_default_ieee_denormals():
    assert _bits(_quarter(np.float32(TINY)))[0] == QUARTER
    assert _bits(np.float32(TINY) / np.float32(4))[0] == QUARTER  # NumPy's own arithmetic


def test_flushed_results_and_inputs_are_zero(flushing):
    assert _bits(_quarter(np.float32(TINY)))[0] == 0
    assert _bits(np.float32(TINY) / np.float32(4))[0] == 0
    tiny64 = np.finfo(np.float64).tiny
    assert np.array([_quarter(np.float64(tiny64))]).view(np.int64)[0] == 0
    denormal = np.array([1], np.int32).view(np.float32)[0]  # the smallest denormal
    assert _bits(_plus_zero(denormal))[0] == 0


def test_every_numba_thread_flushes(flushing):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread")
    out = np.full(64 * numba.config.NUMBA_NUM_THREADS, np.nan, np.float32)
    _quarters(np.full(out.size, TINY, np.float32), out)
    assert (_bits(out) == 0).all()


def test_off_again_restores_ieee_in_every_thread():
    sn.set_flush_denormal(True)
    sn.set_flush_denormal(False)
    out = np.zeros(64 * numba.config.NUMBA_NUM_THREADS, np.float32)
    _quarters(np.full(out.size, TINY, np.float32), out)
    assert (_bits(out) == QUARTER).all() and _bits(_quarter(np.float32(TINY)))[0] == QUARTER


def test_a_step_trains_with_flushing_as_without(flushing):
    """A float32 step's results agree with the unflushed step's where nothing is denormal."""
    def trained(flush):
        sn.set_flush_denormal(flush)
        sn.manual_seed(0)
        model = sn.Sequential(sn.Linear(6, 5), sn.ReLU(), sn.Linear(5, 3))
        step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters()))
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)
        return [step(X, y) for _ in range(5)], model[0].weight.data.copy()

    (on, w_on), (off, w_off) = trained(True), trained(False)
    assert on == off and np.array_equal(w_on, w_off)


def test_mode_must_be_a_bool():
    with pytest.raises(ValueError, match="mode must be True or False"):
        sn.set_flush_denormal(1)
