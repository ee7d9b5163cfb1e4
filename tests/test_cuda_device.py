"""Device placement: ``model.to("cuda")``/``to("cpu")``, state dicts across devices, the device
``sn.compile`` picks, and ``model(X)`` on the GPU.

Runs under Numba's CUDA simulator (or a GPU with ``NUMBA_ENABLE_CUDASIM=0``), with the same
bootstrapping as ``test_cuda_step.py``: if ``numba.cuda`` was loaded before this module
could enable the simulator, the file re-runs itself in a subprocess.  The references never
share the CUDA renderer: the CPU backend (`codegen.cpu`, run through the interpreter to skip
Numba compilations), PyTorch, and the host's own arithmetic for transfers.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before Numba is imported

import numba  # noqa: E402

if "numba.cuda" not in sys.modules:  # Numba came first (another test module), numba.cuda
    numba.config.reload_config()  # not yet: re-read, so the variable still takes effect

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from cuda_support import compile_ptx_in_subprocess, compile_to_ptx, rerun_in_simulator  # noqa: E402
from numba import config  # noqa: E402
from numba import cuda as numba_cuda  # noqa: E402

import symnet as sn  # noqa: E402
from symnet.backends.cpu import TrainStep  # noqa: E402
from symnet.backends.cuda import CudaTrainStep  # noqa: E402

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SIMULATED = bool(config.ENABLE_CUDASIM)
RUNS_HERE = SIMULATED or numba_cuda.is_available()
needs_cuda = pytest.mark.skipif(not RUNS_HERE, reason="Numba was imported without the CUDA "
                                "simulator and there is no GPU: test_in_simulator reruns")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
OPTIMIZERS = {
    "sgd_momentum": lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: sn.optim.Adam(p, lr=0.01),
}


@pytest.mark.skipif(RUNS_HERE, reason="CUDA (or its simulator) runs in this process")
def test_in_simulator():
    """This file again, in a process that enables the simulator before importing Numba."""
    rerun_in_simulator(__file__)


def _model(seed=0, dtype=np.float32):
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(4, 3), sn.Tanh(), sn.Linear(3, 2)).to(dtype)


def _batches(count, dtype=np.float32, batch=6):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((batch, 4)).astype(dtype), rng.integers(0, 2, batch))
            for _ in range(count)]


def _cpu_step(model, optimizer):
    """The CPU backend's fused step, interpreted (no Numba compilation): the reference."""
    step = sn.compile(model, sn.CrossEntropyLoss(), optimizer)
    assert isinstance(step, TrainStep)
    step.function = step.function.py_func
    return step


def _optimizer_state(optimizer) -> dict[str, np.ndarray]:
    return {f"{i}.{prefix}": np.array(a) for i, state in enumerate(optimizer.state)
            for prefix, a in state.items()}


def _same(assert_close, actual: dict, expected: dict, rtol, what):
    """Same keys, each a host numpy array close to the expected one."""
    assert list(actual) == list(expected), what
    for key, value in expected.items():
        assert isinstance(actual[key], np.ndarray), f"{what} {key}: {type(actual[key])}"
        assert_close(actual[key], value, rtol, f"{what} {key}")


class Transfers:
    """Counts host↔device copies: `cuda.to_device` and the device array's copy methods (the
    outermost call only: on a GPU, ``to_device`` calls ``copy_to_device``)."""

    def __init__(self, monkeypatch):
        self.counts: dict[str, int] = {}
        self.depth = 0
        array_type = type(numba_cuda.device_array(1))
        for owner, name in ((numba_cuda, "to_device"), (array_type, "copy_to_host"),
                            (array_type, "copy_to_device")):
            monkeypatch.setattr(owner, name, self._counting(name, getattr(owner, name)))

    def _counting(self, name, function):
        def counted(*args, **kwargs):
            if self.depth == 0:
                self.counts[name] = self.counts.get(name, 0) + 1
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
        return counted

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


@needs_cuda
@pytest.mark.parametrize("optimizer, dtype", [("sgd_momentum", np.float32),
                                              ("adam", np.float64)])
def test_to_cuda_trains_like_cpu_and_to_cpu_brings_it_home(optimizer, dtype, assert_close):
    """to("cuda") → 2 steps → to("cpu") → to("cuda") → 1 step (same step object) → to("cpu"):
    parameters and optimizer state equal the CPU backend's after the same steps."""
    rtol = TOLERANCE[dtype]
    model = _model().to("cuda", dtype)  # PyTorch's to(device, dtype) form
    assert (model.device, model.dtype) == ("cuda", dtype)
    reference = _model(dtype=dtype)
    opt, ref_opt = OPTIMIZERS[optimizer](model.parameters()), \
        OPTIMIZERS[optimizer](reference.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)  # no device: the model's
    assert isinstance(step, CudaTrainStep)
    ref_step = _cpu_step(reference, ref_opt)
    batches = _batches(3, dtype)
    for k, (X, y) in enumerate(batches[:2]):
        assert_close(step(X, y), ref_step(X, y), rtol, f"loss at step {k + 1}")
    assert model.to("cpu") is model and model.device == "cpu"
    assert all(p.device == "cpu" for p in model.parameters())
    _same(assert_close, {k: p.data for k, p in model.named_parameters()},
          {k: p.data for k, p in reference.named_parameters()}, rtol, "parameter")
    _same(assert_close, _optimizer_state(opt), _optimizer_state(ref_opt), rtol, "state")

    model.to("cuda")  # the step follows its model back to the GPU
    assert_close(step(*batches[2]), ref_step(*batches[2]), rtol, "loss at step 3")
    model.to("cpu")
    _same(assert_close, {k: p.data for k, p in model.named_parameters()},
          {k: p.data for k, p in reference.named_parameters()}, rtol, "parameter")
    _same(assert_close, _optimizer_state(opt), _optimizer_state(ref_opt), rtol, "state")
    assert opt.step_count == ref_opt.step_count == 3


@needs_cuda
def test_a_step_moves_only_the_batch_in_and_the_loss_out(monkeypatch):
    model = _model().to("cuda")
    opt = OPTIMIZERS["adam"](model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False)
    (X, y), = _batches(1)
    step(X, y)  # first call: per-batch temporaries
    transfers = Transfers(monkeypatch)
    step(X, y)
    assert transfers.take() == {"copy_to_device": 2, "copy_to_host": 1}  # X, labels; the loss
    model(X)
    assert transfers.take() == {"to_device": 1, "copy_to_host": 1}  # X; the output
    model.state_dict()
    assert transfers.take() == {"copy_to_host": 4}  # each parameter, once
    model.state_dict()
    assert transfers.take() == {}  # still current: nothing to fetch
    model[0].bias.data[...] = 0  # a host write: uploaded before the device reads again
    step(X, y)
    assert transfers.take() == {"copy_to_device": 3, "copy_to_host": 1}


@needs_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # simulator threads: inf · 0
def test_a_checked_step_brings_back_one_flag_more(monkeypatch):
    """check_finite adds one 1-element copy back, whether the step is applied or refused."""
    model = _model().to("cuda")
    opt = OPTIMIZERS["adam"](model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)  # checked: the default
    (X, y), = _batches(1)
    step(X, y)
    transfers = Transfers(monkeypatch)
    step(X, y)
    assert transfers.take() == {"copy_to_device": 2, "copy_to_host": 2}  # X, labels; flag, loss
    model[2].weight.data[0, 0] = np.inf  # (fetches the weights first)
    transfers.take()
    with pytest.raises(FloatingPointError, match="train step 3: the loss became (nan|inf)"):
        step(X, y)
    assert transfers.take() == {"copy_to_device": 3, "copy_to_host": 2}
    assert opt.step_count == 2


@needs_cuda
def test_state_dicts_of_a_cuda_model_are_host_arrays_that_load_anywhere(tmp_path, assert_close,
                                                                         torch_mirror):
    model = _model().to("cuda")
    opt = OPTIMIZERS["adam"](model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    reference = _model()
    ref_opt = OPTIMIZERS["adam"](reference.parameters())
    ref_step = _cpu_step(reference, ref_opt)
    for X, y in _batches(2):
        step(X, y)
        ref_step(X, y)
    state = model.state_dict()
    assert model.device == "cuda"
    _same(assert_close, state, reference.state_dict(), 1e-5, "state_dict")
    step.sync()  # what the host arrays hold after an explicit sync: the same
    _same(assert_close, state, {k: np.array(p.data) for k, p in model.named_parameters()}, 0,
          "synced")
    tensors = opt.state_dict()["tensors"]
    _same(assert_close, dict(tensors), dict(ref_opt.state_dict()["tensors"]), 1e-5, "state")

    sn.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
            tmp_path / "ckpt.safetensors")
    loaded = sn.load(tmp_path / "ckpt.safetensors")
    cpu_model = _model(seed=1)
    cpu_model.load_state_dict(loaded["model"])
    X = _batches(1, batch=5)[0][0]
    net = torch_mirror(cpu_model)  # a torch.nn.Sequential loaded from the same state_dict
    with torch.no_grad():
        expected = net(torch.tensor(X, dtype=torch.float64)).numpy()
    torch_net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(),
                                    torch.nn.Linear(3, 2))
    torch_net.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert_close(torch_net(torch.tensor(X)).numpy(), expected, 1e-6, "torch from cuda")
    assert_close(cpu_model(X), expected, 1e-6, "CPU model from the cuda checkpoint")
    assert_close(model(X), expected, 1e-6, "the cuda model itself")


@needs_cuda
def test_loading_into_a_cuda_model_changes_what_the_next_step_uses(assert_close):
    """After training, load other weights and a fresh optimizer state, and zero a bias through
    ``p.data``: the next step equals a CPU model's first step from those values."""
    model = _model().to("cuda")
    opt = OPTIMIZERS["adam"](model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    batches = _batches(2)
    step(*batches[0])
    other = _model(seed=5)
    other_opt = OPTIMIZERS["adam"](other.parameters())
    model.load_state_dict(other.state_dict())
    opt.load_state_dict(other_opt.state_dict())
    model[2].bias.data[...] = 0
    other[2].bias.data[...] = 0
    assert model.device == "cuda"
    other_step = _cpu_step(other, other_opt)
    assert_close(step(*batches[1]), other_step(*batches[1]), 1e-5, "loss after loading")
    _same(assert_close, model.state_dict(), other.state_dict(), 1e-5, "parameter")
    _same(assert_close, _optimizer_state(opt), _optimizer_state(other_opt), 1e-5, "state")


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_on_the_gpu_matches_torch(dtype, assert_close, torch_mirror):
    sn.manual_seed(3)
    model = sn.Sequential(sn.Linear(4, 3), sn.ReLU(), sn.Linear(3, 3), sn.Sigmoid(),
                          sn.Linear(3, 2), sn.Softmax()).to(dtype)
    net = torch_mirror(model)
    model.to("cuda")
    X = np.random.default_rng(1).standard_normal((7, 4)).astype(dtype)
    out = model(X)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (7, 2)
    with torch.no_grad():
        expected = net(torch.tensor(X, dtype=torch.float64)).numpy()
    assert_close(out, expected, TOLERANCE[dtype] * 10, "model(X) on cuda")
    assert model.device == "cuda"  # the forward only read the parameters' device copies


@needs_cuda
def test_compile_uses_the_model_device_and_refuses_a_different_one():
    model = _model()
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    loss = sn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"device='cuda'.*on 'cpu'.*model\.to\('cuda'\)"):
        sn.compile(model, loss, opt, device="cuda")
    assert isinstance(sn.compile(model, loss, opt, device="cpu"), TrainStep)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        sn.compile(model, loss, opt, device="tpu")
    cpu_step = _cpu_step(model, opt)
    (X, y), = _batches(1)
    cpu_step(X, y)

    model.to("cuda")
    with pytest.raises(ValueError, match=r"device='cpu'.*on 'cuda'.*model\.to\('cpu'\)"):
        sn.compile(model, loss, opt, device="cpu")
    with pytest.raises(ValueError, match="parallel=True"):
        sn.compile(model, loss, opt, parallel=True)
    with pytest.raises(ValueError, match="denormals='flush'.*GPU.*'auto' or 'ieee'"):
        sn.compile(model, loss, opt, denormals="flush")
    with pytest.raises(ValueError, match=r"0\.weight is on 'cuda'.*compiled for 'cpu'"):
        cpu_step(X, y)  # a step is bound to its device
    cuda_step = sn.compile(model, loss, opt, device="cuda:0")
    assert isinstance(cuda_step, CudaTrainStep)
    model.to("cpu")
    with pytest.raises(ValueError, match=r"is on 'cpu'.*compiled for 'cuda'.*model\.to"):
        cuda_step(X, y)
    with pytest.raises(ValueError, match=r"the model is on 'cpu'; move it with model\.to"):
        CudaTrainStep(model, loss, opt)

    model[0].weight._move("cuda")  # one parameter moved by hand: the model has no one device
    with pytest.raises(ValueError, match=r"several devices.*0\.bias on 'cpu'.*on 'cuda'"):
        sn.compile(model, loss, opt)


@needs_cuda
def test_to_accepts_pytorch_forms_and_rejects_others(assert_close):
    model = _model()
    start = model.state_dict()
    assert model.to("cuda:0") is model and model.device == "cuda"
    assert repr(model[0].weight) == "Parameter(shape=(3, 4), dtype=float32, device='cuda')"
    assert model.to(dtype=np.float64) is model  # converts on the host, stays on the GPU
    assert (model.device, model.dtype) == ("cuda", np.float64)
    converted = {k: v.astype(np.float64) for k, v in start.items()}
    _same(assert_close, model.state_dict(), converted, 0, "converted")
    assert model.cpu().device == "cpu" and model.cuda().device == "cuda"
    assert model.to(torch.device("cpu"), "float32") is model
    assert (model.device, model.dtype) == ("cpu", np.float32)
    with pytest.raises(ValueError, match="one GPU.*CUDA_VISIBLE_DEVICES"):
        model.to("cuda:1")
    with pytest.raises(ValueError, match="'tpu' is neither a device"):
        model.to("tpu")
    with pytest.raises(TypeError, match="two devices"):
        model.to("cpu", "cuda")
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(np.int32)
    assert sn.Sequential(sn.ReLU()).to("cuda").device == "cpu"  # no parameters: nothing moves


@needs_cuda
def test_copies_of_a_cuda_model_keep_its_values_and_device(assert_close):
    model = _model().to("cuda")
    opt = OPTIMIZERS["adam"](model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    step(*_batches(1)[0])
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.device == "cuda"
        _same(assert_close, twin.state_dict(), model.state_dict(), 0, "copy")
    state = copy.deepcopy(opt).state
    _same(assert_close, {f"{i}.{k}": v for i, s in enumerate(state) for k, v in s.items()},
          _optimizer_state(opt), 0, "optimizer copy")


def test_without_numba_cuda_to_cuda_says_so_and_moves_nothing(monkeypatch):
    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    for attempt in (lambda: model.to("cuda"), model.cuda,
                    lambda: sn.compile(model, sn.CrossEntropyLoss(), opt, device="cuda")):
        with pytest.raises(RuntimeError, match=r"numba-cuda\), which is not installed.*pip"):
            attempt()
        assert model.device == "cpu"


def test_without_a_gpu_to_cuda_says_so():
    """A fresh process with the simulator off: on a machine without a GPU, the real error."""
    code = ("import symnet as sn\n"
            "from numba import cuda\n"
            "if cuda.is_available(): print('HAS-GPU'); raise SystemExit\n"
            "try:\n"
            "    sn.Sequential(sn.Linear(2, 2)).to('cuda')\n"
            "except RuntimeError as error:\n"
            "    print('ERROR', error)\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    if "HAS-GPU" in run.stdout:
        pytest.skip("this machine has a CUDA GPU")
    assert "ERROR" in run.stdout and "no CUDA GPU was found" in run.stdout, run.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in run.stdout


# --- the real compiler -----------------------------------------------------------------------


def compile_forward_ptx() -> int:
    """Compile every kernel of four forward programs for sm_90 (run without the simulator):
    a plain one in both dtypes, and one with LayerNorm, BatchNorm1d and Dropout in training
    (batch statistics, running-statistic updates, a mask) and in eval (running statistics)."""
    from symnet.backends import kernels
    from symnet.symbolic.graph import N

    count = 0
    for dtype in (np.float32, np.float64):
        model = sn.Sequential(sn.Linear(4, 3), sn.LeakyReLU(0.1), sn.Linear(3, 3), sn.GELU(),
                              sn.Linear(3, 3), sn.Sigmoid(), sn.Linear(3, 2),
                              sn.LogSoftmax()).to(dtype)
        _, program = kernels.forward_program(model)
        count += compile_to_ptx(program, N, dtype, "forward PTX test")
    model = sn.Sequential(sn.Linear(4, 3), sn.LayerNorm(3), sn.BatchNorm1d(3), sn.Dropout(0.2),
                          sn.Linear(3, 2))
    for mode in (True, False):
        _, program = kernels.forward_program(model.train(mode))
        count += compile_to_ptx(program, N, np.float32, f"forward PTX test, training={mode}")
    return count


@needs_cuda  # else the rerun in the simulator's process compiles them
def test_forward_kernels_compile_to_ptx():
    """The simulator accepts code the CUDA compiler rejects: compile the forward for real."""
    compile_ptx_in_subprocess(__file__, "compile_forward_ptx")


@needs_cuda
def test_eager_backward_and_opt_step_on_a_cuda_model_see_the_trained_values(assert_close):
    """After fused CUDA steps the device holds the newest values: the eager path (host
    kernels) must read them and its update must reach the device before the next step."""
    model, reference = _model().to("cuda"), _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    ref_opt = OPTIMIZERS["adam"](reference.parameters())
    step, ref_step = sn.compile(model, sn.CrossEntropyLoss(), opt), _cpu_step(reference, ref_opt)
    batches = _batches(3)
    step(*batches[0])
    ref_step(*batches[0])
    for net, optimizer in ((model, opt), (reference, ref_opt)):
        optimizer.zero_grad()
        sn.CrossEntropyLoss()(net(batches[1][0]), batches[1][1]).backward()
        optimizer.step()
    assert_close(step(*batches[2]), ref_step(*batches[2]), 1e-5, "loss at step 3")
    model.to("cpu")
    _same(assert_close, {k: p.data for k, p in model.named_parameters()},
          {k: p.data for k, p in reference.named_parameters()}, 1e-5, "parameter")
