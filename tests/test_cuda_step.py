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
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before Numba is imported

import numba  # noqa: E402

if "numba.cuda" not in sys.modules:  # Numba came first (another test module), numba.cuda
    numba.config.reload_config()  # not yet: re-read, so the variable still takes effect

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from cuda_support import rerun_in_simulator  # noqa: E402
from numba import config  # noqa: E402
from numba import cuda as numba_cuda  # noqa: E402

import symnet as sn  # noqa: E402
import symnet.backends.cuda as sn_cuda  # noqa: E402
from symnet.backends.cuda import CudaTrainStep  # noqa: E402

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
    rerun_in_simulator(__file__)


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


# --- check_finite: a NaN/Inf step is refused on the device, as on the CPU ----------------------
def _snapshot(model, optimizer) -> tuple:
    """Bytes of every parameter and optimizer buffer (host copies), and the step count."""
    tensors = optimizer.state_dict()["tensors"]
    return ({k: v.tobytes() for k, v in model.state_dict().items()},
            {k: np.asarray(v).tobytes() for k, v in tensors.items()}, optimizer.step_count)


def _nan_parameter(model, X, y):
    """A NaN written into a weight through the host (uploaded before the step): loss NaN."""
    good = model[0].weight.data[1, 2]
    model[0].weight.data[1, 2] = np.nan

    def restore():  # through .data again: an array held from before a step is stale
        model[0].weight.data[1, 2] = good
    return X, y, restore


def _inf_batch(model, X, y):
    """Finite targets whose squared error overflows the dtype: loss +Inf."""
    return X, np.full_like(y, np.sqrt(np.finfo(y.dtype).max) * 4), lambda: None


def _nan_gradient(model, X, y):
    """|z|^(2/3) has a cusp at 0: with zero inputs and biases the loss is finite, dW1 is not."""
    model[0].bias.data[...] = 0
    return np.zeros_like(X), y, lambda: None


def _cusp_model(dtype):
    import sympy as sp

    x = sp.Symbol("x", real=True)
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(5, 4), sn.Activation("cusp", sp.cbrt(x**2), x),
                          sn.Linear(4, 3))
    return model.to(DTYPES[dtype])


REFUSALS = {  # case: (how the step goes bad, the model, optimizer, dtype, the message)
    "nan_parameter": (_nan_parameter, None, "adam", "f32", "the loss became nan"),
    "inf_batch": (_inf_batch, None, "sgd_momentum", "f64", "the loss became inf"),
    "nan_gradient": (_nan_gradient, _cusp_model, "adamw", "f64", "a gradient became NaN"),
}


@needs_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # simulator threads: overflow, 0/0
@pytest.mark.parametrize("case", list(REFUSALS))
def test_check_finite_refuses_the_step_and_the_next_one_matches_cpu(case, assert_close):
    """Good step, bad step (refused, nothing changed), good step: as the CPU backend does it."""
    spoil, make, optimizer, dtype, what = REFUSALS[case]
    models = [make(dtype) if make else _setup("tanh", "mse", optimizer, dtype)[0]
              for _ in range(2)]
    model, ref_model = models[0].to("cuda"), models[1]
    opt, ref_opt = (OPTIMIZERS[optimizer](m.parameters()) for m in models)
    gpu = sn.compile(model, sn.MSELoss(), opt, check_finite=True)
    cpu = sn.compile(ref_model, sn.MSELoss(), ref_opt, check_finite=True)
    cpu.function = cpu.function.py_func
    assert isinstance(gpu, CudaTrainStep) and gpu.check_finite
    (X, y), (X2, y2) = _batches("mse", dtype, count=2)
    rtol = TOLERANCE[DTYPES[dtype]]
    assert_close(gpu(X, y), cpu(X, y), rtol, "loss at step 1")

    errors = []
    for step, m, o in ((gpu, model, opt), (cpu, ref_model, ref_opt)):
        bad_X, bad_y, restore = spoil(m, X2, y2)
        before = _snapshot(m, o)
        with pytest.raises(FloatingPointError, match=r"^train step 2: ") as caught, \
                np.errstate(all="ignore"):
            step(bad_X, bad_y)
        errors.append(str(caught.value))
        if step is gpu:
            gpu.sync()
        after = _snapshot(m, o)
        assert after[2] == before[2] == 1, "step_count moved"
        changed = [k for part in (0, 1) for k in before[part] if before[part][k] != after[part][k]]
        assert not changed, f"changed by the refused step: {changed}"
        restore()
    assert what in errors[0] and "left unchanged" in errors[0]
    if DTYPES[dtype] == np.float64:  # the loss is printed to 6 digits: equal in float64
        assert errors[0] == errors[1]

    assert_close(gpu(X2, y2), cpu(X2, y2), rtol, "loss at step 3 (the next good one)")
    gpu.sync()
    assert opt.step_count == ref_opt.step_count == 2
    expected = _state(ref_model, ref_opt)
    for name, array in _state(model, opt).items():
        assert_close(array, expected[name], rtol, name)


@needs_cuda
def test_check_finite_off_emits_no_check_and_on_adds_one_kernel():
    model, loss, opt = _setup("relu", "ce", "adam", "f32")
    model.to("cuda")
    plain = CudaTrainStep(model, loss, opt, tile=TILE, check_finite=False)
    guarded = CudaTrainStep(model, loss, opt, tile=TILE)  # the default
    for text in ("nonfinite", "check_finite", ", True", ", False"):
        assert text not in plain.source(), text
    assert guarded.source().count("def check_finite(") == 1
    assert "# check_finite: no update unless L, dW1, dW2, db1, db2 are finite" in guarded.source()
    check = guarded.source().index("check_finite[")
    assert all(guarded.source().index(f"loop_{p}[") > check for p in ("W1", "b1", "W2", "b2"))
    X, y = next(_batches("ce", "f32"))
    loss_value = plain(X, y)
    assert isinstance(loss_value, float) and opt.step_count == 1
    assert guarded(X, y) < loss_value and opt.step_count == 2
    assert "check_finite=False" in repr(plain) and "check_finite" not in repr(guarded)


@needs_cuda
def _matches_cpu(setup, assert_close) -> None:
    """Three steps of a model on the GPU and on the CPU from the same ``setup()``."""
    (model, loss_fn, opt), (ref_model, ref_loss, ref_opt) = setup(), setup()
    gpu = CudaTrainStep(model.to("cuda"), loss_fn, opt, tile=TILE)
    cpu = _cpu_step(ref_model, ref_loss, ref_opt)
    for k, (X, y) in enumerate(_batches("ce", "f64")):
        assert_close(gpu(X, y), cpu(X, y), 1e-10, f"loss at step {k + 1}")
    gpu.sync()
    expected = _state(ref_model, ref_opt)
    for name, array in _state(model, opt).items():
        assert_close(array, expected[name], 1e-10, name)


def test_a_module_used_twice_matches_cpu(assert_close):
    """A shared Linear's gradient is the sum over its two uses on the GPU as on the CPU
    (whose sum is checked against torch in test_reliability_params)."""
    def setup():
        sn.manual_seed(0)
        shared = sn.Linear(4, 4)
        model = sn.Sequential(sn.Linear(5, 4), sn.Tanh(), shared, sn.Tanh(), shared,
                              sn.Linear(4, 3)).to(np.float64)
        return model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters(), lr=0.01)

    _matches_cpu(setup, assert_close)
    assert len(setup()[0].parameters()) == 6  # shared: counted once


@needs_cuda
def test_a_step_compiled_before_is_loaded_from_the_index_without_deriving(
        tmp_path, monkeypatch, assert_close):
    """As on the CPU: a CUDA step found in the on-disk step index needs no SymPy work."""
    import symnet.backends.step as step_module
    from symnet.backends import kernels

    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "UNITS", {})
    first_model, loss, first_opt = _setup("tanh", "ce", "sgd_momentum", "f32")
    first = CudaTrainStep(first_model.to("cuda"), loss, first_opt, tile=TILE)
    monkeypatch.setattr(kernels, "UNITS", {})  # a new process, as far as the step can tell

    def refuse(*args, **kwargs):
        raise AssertionError("derived on a cache hit")

    monkeypatch.setattr(step_module, "derive", refuse)
    model, loss, opt = _setup("tanh", "ce", "sgd_momentum", "f32")
    again = CudaTrainStep(model.to("cuda"), loss, opt, tile=TILE)
    assert again.source() == first.source()
    for X, y in _batches("ce", "f32"):
        assert_close(again(X, y), first(X, y), 1e-6, "loss")


@needs_cuda
def test_normalisation_and_residual_layers_match_cpu(assert_close):
    """LayerNorm's and RMSNorm's row statistics (`RowReduce`) and a residual sum on the GPU
    as on the CPU (whose values are checked against torch in test_layers)."""
    class Residual(sn.Module):
        def __init__(self):
            super().__init__()
            self.norm = sn.LayerNorm(4, dtype=np.float64)
            self.fc = sn.Linear(4, 4, dtype=np.float64)

        def forward(self, x):
            return x + self.fc(sn.gelu(self.norm(x)))

    def setup():
        sn.manual_seed(0)
        model = sn.Sequential(sn.Linear(5, 4), Residual(), sn.RMSNorm(4),
                              sn.Linear(4, 3)).to(np.float64)
        return model, sn.CrossEntropyLoss(), sn.optim.AdamW(model.parameters(), lr=0.01)

    _matches_cpu(setup, assert_close)


class _NormBlock(sn.Module):
    """A residual block around a LayerNorm: x + fc(gelu(norm(x)))."""

    def __init__(self, d):
        super().__init__()
        self.norm = sn.LayerNorm(d, dtype=np.float64)
        self.fc = sn.Linear(d, d, dtype=np.float64)

    def forward(self, x):
        return x + self.fc(sn.gelu(self.norm(x)))


def _batchnorm_dropout_model():
    sn.manual_seed(0)
    # No bias before the BatchNorm: its gradient is 0 up to rounding, which Adam amplifies.
    model = sn.Sequential(sn.Linear(5, 4, bias=False), sn.BatchNorm1d(4, momentum=0.2),
                          sn.Tanh(), _NormBlock(4), sn.Dropout(0.25),
                          sn.Linear(4, 3)).to(np.float64)
    return model, sn.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def _steps(step, model, batches, seed=11):
    """Losses and dropout masks of a step run over ``batches`` from symnet's ``seed``."""
    sn.manual_seed(seed)
    losses, masks = [], []
    for X, y in batches:
        losses.append(step(X, y))
        masks.append(model[4].last_mask.copy())
    return losses, masks


@needs_cuda
def test_batchnorm_dropout_layernorm_residual_model_matches_cpu(assert_close):
    """Dropout masks drawn on the host from the same seed, BatchNorm's running statistics
    updated on the device and back in the model after every step, as on the CPU (whose
    values are checked against torch in test_layers)."""
    (model, opt), (ref_model, ref_opt) = _batchnorm_dropout_model(), _batchnorm_dropout_model()
    gpu = sn.compile(model.to("cuda"), sn.CrossEntropyLoss(), opt)
    cpu = _cpu_step(ref_model, sn.CrossEntropyLoss(), ref_opt)
    assert isinstance(gpu, CudaTrainStep)
    batches = list(_batches("ce", "f64"))
    losses, masks = _steps(gpu, model, batches)
    ref_losses, ref_masks = _steps(cpu, ref_model, batches)
    for k in range(STEPS):
        assert np.array_equal(masks[k], ref_masks[k]), f"mask at step {k + 1}"
        assert 0 < masks[k].sum() < masks[k].size
        assert_close(losses[k], ref_losses[k], 1e-10, f"loss at step {k + 1}")
    state, expected = model.state_dict(), ref_model.state_dict()  # no sync: reads are current
    assert list(state) == list(expected)
    assert state["1.num_batches_tracked"] == expected["1.num_batches_tracked"] == STEPS
    for key in state:
        assert_close(state[key], expected[key], 1e-10, key)
    assert not np.array_equal(state["1.running_var"], np.ones(4))
    expected_state = _state(ref_model, ref_opt)
    for name, array in _state(model, opt).items():
        assert_close(array, expected_state[name], 1e-10, name)

    X, y = batches[0]
    with pytest.raises(ValueError, match="more than 1 sample"):
        gpu(X[:1], y[:1])
    before = model.state_dict()
    X, y, restore = _nan_parameter(model, X, y)  # the batch statistics become NaN
    with pytest.raises(FloatingPointError), np.errstate(all="ignore"):
        gpu(X, y)  # refused: the running statistics are left as they were too
    restore()
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key]), key

    model.eval(), ref_model.eval()
    X = np.random.default_rng(3).standard_normal((4, 5))
    assert_close(model(X), ref_model(X), 1e-10, "eval forward (running statistics)")
    model.to("cpu")
    assert_close(model.state_dict()["1.running_mean"], expected["1.running_mean"], 1e-10,
                 "running_mean after to('cpu')")


@needs_cuda
def test_training_forward_draws_masks_and_updates_running_stats_as_the_cpu(assert_close):
    """``model(X)`` in training mode on the GPU: the CPU's masks from the same seed, the
    running statistics updated once per call, and the eager backward (host kernels) uses
    the masks that call drew."""
    (model, _), (ref_model, _) = _batchnorm_dropout_model(), _batchnorm_dropout_model()
    model.to("cuda")
    X, y = next(_batches("ce", "f64"))
    outputs, grads = [], []
    for m in (model, ref_model):
        sn.manual_seed(5)
        out = m(X)
        sn.CrossEntropyLoss()(out, y).backward()
        outputs.append(out)
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert np.array_equal(model[4].last_mask, ref_model[4].last_mask)
    assert_close(outputs[0], outputs[1], 1e-12, "training forward")
    state, expected = model.state_dict(), ref_model.state_dict()
    assert state["1.num_batches_tracked"] == 1
    for key in ("1.running_mean", "1.running_var"):
        assert_close(state[key], expected[key], 1e-12, key)
    for key, grad in grads[0].items():
        assert_close(grad, grads[1][key], 1e-12, f"grad {key}")
    with pytest.raises(ValueError, match="more than 1 sample"):
        model(X[:1])
