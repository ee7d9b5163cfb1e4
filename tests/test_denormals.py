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


def _tiny_step(denormals: str, parallel, batch: int = 4):
    """SGD (lr 1) on ``Z = W·x`` with W = TINY (64 × 1), x = 1, MSE against 0: each entry of
    dZ is TINY/(32·batch), denormal; the gradient sums them to TINY/32 and the update
    leaves TINY − TINY/32, denormal too.  Flushed, dZ is 0 and W stays TINY."""
    model = sn.Sequential(sn.Linear(1, 64, bias=False)).to(np.float32)
    model.load_state_dict({"0.weight": np.full((64, 1), TINY, np.float32)})
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=1.0),
                      parallel=parallel, denormals=denormals)
    return step(np.ones((batch, 1), np.float32), np.zeros((batch, 64), np.float32)), model


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "threads"])
def test_a_compiled_step_flushes_while_it_runs_by_default(parallel):
    loss, model = _tiny_step("auto", parallel, batch=8 * numba.config.NUMBA_NUM_THREADS)
    assert (_bits(model[0].weight.data) == _bits(TINY)[0]).all()
    # the thread that called it, and Numba's threads, are back in IEEE mode
    out = np.zeros(64 * numba.config.NUMBA_NUM_THREADS, np.float32)
    _quarters(np.full(out.size, TINY, np.float32), out)
    assert (_bits(out) == QUARTER).all() and _bits(_quarter(np.float32(TINY)))[0] == QUARTER
    assert _bits(np.float32(TINY) / np.float32(4))[0] == QUARTER


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "threads"])
def test_an_ieee_step_keeps_denormals(parallel):
    _, model = _tiny_step("ieee", parallel)
    expected = np.float32(TINY) - np.float32(TINY) / np.float32(32)  # IEEE here: exact
    assert _bits(expected)[0] != 0
    assert (_bits(model[0].weight.data) == _bits(expected)[0]).all()


def test_an_ieee_step_follows_set_flush_denormal(flushing):
    _, model = _tiny_step("ieee", False)
    assert (_bits(model[0].weight.data) == _bits(TINY)[0]).all()


def test_a_step_that_stops_at_the_finite_check_restores_ieee():
    model = sn.Sequential(sn.Linear(3, 2)).to(np.float32)
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError):  # the loss overflows: (1e30)² is Inf in float32
        step(np.full((2, 3), 1e30, np.float32), np.zeros((2, 2), np.float32))
    assert _bits(_quarter(np.float32(TINY)))[0] == QUARTER


def test_denormals_must_be_a_mode():
    model = sn.Sequential(sn.Linear(3, 2))
    with pytest.raises(ValueError, match="denormals must be one of 'auto', 'flush', 'ieee'"):
        sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1),
                   denormals=True)
