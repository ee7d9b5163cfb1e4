"""CudaTrainStep against the CPU's `sn.compile`: same weights, same batches, three steps.

Runs under Numba's CUDA simulator (or a GPU with ``NUMBA_ENABLE_CUDASIM=0``).  If
``numba.cuda`` was loaded before this module could enable the simulator, the file re-runs
itself in a subprocess.  The simulator is slow (a Python thread per CUDA thread), so by default each
activation × loss × optimizer runs in one dtype, alternating, so every activation, loss
and optimizer meets both; ``SYMNET_CUDA_FULL=1`` (or a real GPU) runs the whole cross.
The CPU reference runs the CPU renderer's train step through the Python interpreter
(``py_func``) to skip 36 Numba compilations; one test runs the compiled step itself.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before Numba is imported

import numba  # noqa: E402

if "numba.cuda" not in sys.modules:  # Numba came first (another test module), numba.cuda
    numba.config.reload_config()  # not yet: re-read, so the variable still takes effect

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba import config  # noqa: E402
from numba import cuda as numba_cuda  # noqa: E402

import symnet as sn  # noqa: E402
import symnet.cuda as sn_cuda  # noqa: E402
from symnet.cuda import CudaTrainStep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIMULATED = bool(config.ENABLE_CUDASIM)
RUNS_HERE = SIMULATED or numba_cuda.is_available()
needs_cuda = pytest.mark.skipif(not RUNS_HERE, reason="Numba was imported without the CUDA "
                                "simulator and there is no GPU: test_in_simulator reruns")
FULL = not SIMULATED or bool(os.environ.get("SYMNET_CUDA_FULL"))
TILE = 4 if SIMULATED else 16  # 16 threads per simulated block instead of 256
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
BATCH, STEPS = 6, 3


@pytest.mark.skipif(RUNS_HERE, reason="CUDA (or its simulator) runs in this process")
def test_in_simulator():
    """This file again, in a process that enables the simulator before importing Numba."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(Path(__file__).relative_to(ROOT))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


ACTIVATIONS = {"relu": sn.ReLU, "sigmoid": sn.Sigmoid, "tanh": sn.Tanh}
LOSSES = {"ce": sn.CrossEntropyLoss, "mse": sn.MSELoss}
OPTIMIZERS = {
    "sgd_momentum": lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: sn.optim.Adam(p, lr=0.01),
    "adamw": lambda p: sn.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}
DTYPES = {"f32": np.float32, "f64": np.float64}


def _table():
    cases = []
    for k, names in enumerate(itertools.product(ACTIVATIONS, LOSSES, OPTIMIZERS)):
        for n, dtype in enumerate(DTYPES):
            marks = () if FULL or (k + n) % 2 == 0 else pytest.mark.skip(
                reason="simulator: one dtype per combination (SYMNET_CUDA_FULL=1 for both)")
            cases.append(pytest.param(*names, dtype, marks=marks))
    return cases


def _setup(activation, loss, optimizer, dtype):
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(5, 4), ACTIVATIONS[activation](), sn.Linear(4, 3))
    model.to(DTYPES[dtype])
    return model, LOSSES[loss](), OPTIMIZERS[optimizer](model.parameters())


def _batches(loss, dtype, count=STEPS, batch=BATCH):
    rng = np.random.default_rng(7)
    for _ in range(count):
        X = rng.standard_normal((batch, 5)).astype(DTYPES[dtype])
        y = rng.integers(0, 3, batch) if loss == "ce" else \
            rng.standard_normal((batch, 3)).astype(DTYPES[dtype])
        yield X, y


def _cpu_step(model, loss, optimizer, interpreted=True):
    step = sn.compile(model, loss, optimizer)
    if interpreted:
        step.function = step.function.py_func
    return step


def _state(model, optimizer) -> dict[str, np.ndarray]:
    arrays = {f"param {k}": p.data for k, p in model.named_parameters()}
    for i, state in enumerate(optimizer.state):
        arrays.update({f"state {i}.{prefix}": a for prefix, a in state.items()})
    return arrays


def _compare(activation, loss, optimizer, dtype, assert_close, interpreted=True):
    model, loss_fn, opt = _setup(activation, loss, optimizer, dtype)
    ref_model, ref_loss, ref_opt = _setup(activation, loss, optimizer, dtype)
    gpu = CudaTrainStep(model.to("cuda"), loss_fn, opt, tile=TILE)
    cpu = _cpu_step(ref_model, ref_loss, ref_opt, interpreted)
    rtol = TOLERANCE[DTYPES[dtype]]
    for k, (X, y) in enumerate(_batches(loss, dtype)):
        assert_close(gpu(X, y), cpu(X, y), rtol, f"loss at step {k + 1}")
    gpu.sync()
    expected = _state(ref_model, ref_opt)
    for name, array in _state(model, opt).items():
        assert_close(array, expected[name], rtol, name)
    assert opt.step_count == ref_opt.step_count == STEPS


@needs_cuda
@pytest.mark.parametrize("activation, loss, optimizer, dtype", _table())
def test_matches_cpu(activation, loss, optimizer, dtype, assert_close):
    _compare(activation, loss, optimizer, dtype, assert_close)


@needs_cuda
def test_matches_compiled_cpu_step(assert_close):
    """One combination against the Numba-compiled CPU step itself (float32 arithmetic)."""
    _compare("tanh", "ce", "adam", "f32", assert_close, interpreted=False)


def _stored(model, optimizer) -> dict[str, np.ndarray]:
    """The host arrays as stored, without fetching the GPU's newer values (what a reference
    held from before the steps sees)."""
    arrays = {f"param {k}": p._host for k, p in model.named_parameters()}
    for i, state in enumerate(optimizer.state):
        arrays.update({f"state {i}.{prefix}": a for prefix, a in dict.items(state)})
    return arrays


@needs_cuda
def test_state_stays_on_device_until_read(assert_close):
    model, loss, opt = _setup("relu", "ce", "adam", "f64")
    before = {k: a.copy() for k, a in _state(model, opt).items()}
    ids = {k: id(a) for k, a in _state(model, opt).items()}
    step = CudaTrainStep(model.to("cuda"), loss, opt, tile=TILE)
    batches = list(_batches("ce", "f64", count=2))
    step(*batches[0])
    X, y = batches[1]
    step(X[:4], y[:4])  # a new batch size: fresh temporaries, same parameters
    for name, array in _stored(model, opt).items():
        assert np.array_equal(array, before[name]), f"{name} changed on the host"
    step.sync()
    changed = [k for k, a in _stored(model, opt).items() if not np.array_equal(a, before[k])]
    assert len(changed) == len(before), "sync() left arrays unchanged"
    assert {k: id(a) for k, a in _state(model, opt).items()} == ids, "sync() replaced arrays"

    ref_model, ref_loss, ref_opt = _setup("relu", "ce", "adam", "f64")
    ref = _cpu_step(ref_model, ref_loss, ref_opt)
    ref(*batches[0])
    ref(X[:4], y[:4])
    expected = _state(ref_model, ref_opt)
    for name, array in _state(model, opt).items():
        assert_close(array, expected[name], 1e-10, name)


@needs_cuda
def test_source_and_input_errors():
    model, loss, opt = _setup("sigmoid", "ce", "sgd_momentum", "f32")
    step = CudaTrainStep(model.to("cuda"), loss, opt, tile=TILE)
    source = step.source()
    for text in ("@cuda.jit", "cuda.shared.array((TILE, PADDED), DTYPE)", "cuda.syncthreads()",
                 "# dW2 = dZ2*A1.T", "def train_step(", "DTYPE = numba.float32"):
        assert text in source, text
    with pytest.raises(ValueError, match=r"Linear\(5, 4\).*got input with 6 features"):
        step(np.ones((BATCH, 6), np.float32), np.zeros(BATCH, np.int64))
    with pytest.raises(ValueError, match="outside"):
        step(np.ones((BATCH, 5), np.float32), np.full(BATCH, 3))


def test_unavailable_numba_cuda(monkeypatch):
    """Without numba-cuda the error says so and how to install it."""
    import numba

    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    assert not sn_cuda.is_available()
    model, loss, opt = _setup("relu", "ce", "adam", "f32")
    with pytest.raises(RuntimeError, match=r"numba-cuda\), which is not installed.*pip install"):
        CudaTrainStep(model, loss, opt)


def test_no_gpu_found(monkeypatch):
    """With numba-cuda but no GPU (and no simulator), the error says no GPU was found."""
    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(numba_cuda, "is_available", lambda: False)

    def no_driver():
        raise RuntimeError("CUDA driver library cannot be found.")

    monkeypatch.setattr(numba_cuda, "current_context", no_driver)
    assert not sn_cuda.is_available()
    model, loss, opt = _setup("relu", "ce", "adam", "f32")
    with pytest.raises(RuntimeError, match=r"no CUDA GPU was found \(CUDA driver library"):
        CudaTrainStep(model, loss, opt)
