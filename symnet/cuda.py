"""The fused train step on a CUDA GPU: parameters live on the device between steps.

`CudaTrainStep` is `symnet.step.TrainStep` with ``@cuda.jit`` kernels: the same derivation
and IR, rendered by `codegen.cuda`.  Parameters and optimizer state are copied to the GPU
once; each step sends the batch and brings back the loss, nothing else.  ``sync()`` copies
parameters and optimizer state back into the host arrays (in place).

Without a GPU, Numba's simulator runs the same kernels (slowly): set
``NUMBA_ENABLE_CUDASIM=1`` before Numba is imported.

Example:
    >>> import numpy as np, symnet as sn
    >>> from symnet.cuda import CudaTrainStep, is_available
    >>> model = sn.Sequential(sn.Linear(4, 3), sn.Tanh(), sn.Linear(3, 2))
    >>> opt = sn.optim.SGD(model.parameters(), lr=0.1)
    >>> if is_available():  # doctest: +SKIP
    ...     step = CudaTrainStep(model, sn.CrossEntropyLoss(), opt)
    ...     loss = step(np.ones((8, 4), np.float32), np.arange(8) % 2)
    ...     step.sync()  # model.parameters() now hold the trained values
"""

from __future__ import annotations

import numpy as np

import symnet
from codegen import cuda as render
from codegen.cache import load_module
from codegen.lower import lower
from symnet import kernels
from symnet.backprop import derive
from symnet.checks import check_inputs, check_targets
from symnet.graph import N
from symnet.losses import Loss
from symnet.module import Module
from symnet.optim import Optimizer

INSTALL = "pip install 'numba-cuda[cu12]'  (or [cu13] for CUDA 13)"


def _unavailable() -> str | None:
    """Why CUDA can't run here, in the user's words, or None when it can."""
    try:
        from numba import config, cuda
    except ImportError as error:
        return (f"symnet's CUDA backend needs Numba's CUDA support (numba-cuda), which is "
                f"not installed ({error}): {INSTALL}")
    if config.ENABLE_CUDASIM:
        return None
    try:
        if cuda.is_available():
            return None
        cuda.current_context()  # raises with the driver's own reason
    except Exception as error:  # noqa: BLE001 - any driver error means: no usable GPU
        reason = " ".join(str(error).split())
        return f"numba-cuda is installed but no CUDA GPU was found ({reason})"
    return "numba-cuda is installed but no CUDA GPU was found"


def is_available() -> bool:
    """True when Numba finds a CUDA GPU or its CUDA simulator is enabled.

    Example:
        >>> isinstance(is_available(), bool)
        True
    """
    return _unavailable() is None


def _require():
    reason = _unavailable()
    if reason is not None:
        raise RuntimeError(f"{reason}. To run the CUDA kernels without a GPU, set "
                           f"NUMBA_ENABLE_CUDASIM=1 before importing numba.")
    from numba import cuda

    return cuda


_units: dict[tuple, tuple] = {}


class CudaTrainStep:
    """``step(X, y) -> float`` on the GPU; ``sync()`` brings the parameters home.

    ``tile`` is the matmul tile edge (16: 256 threads per block); smaller tiles only
    serve the simulator, which runs one Python thread per CUDA thread.
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, tile: int = 16):
        self.cuda = _require()
        if [id(p) for p in optimizer.params] != [id(p) for p in model.parameters()] or \
                len({id(p) for p in model.parameters()}) != len(optimizer.params):
            raise ValueError("compile: the optimizer must hold exactly model.parameters(), "
                             "in order")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.dtype = model.dtype
        self.derivation = derive(model, loss, optimizer)
        leading, one_hot = kernels.target_arguments(loss)
        key = ("cuda-step", kernels.structure_key(model, loss, self.dtype), tile,
               type(optimizer).__name__, tuple(str(eq) for eq in self.derivation.updates))
        if key not in _units:
            d = self.derivation
            program = lower("train_step", d.forward + d.backward + d.updates, N, leading,
                            frozenset(d.state_symbols()), one_hot)
            source = render.render_module(
                [program], N, self.dtype, tile,
                header=f"symnet CUDA train step: {model!r}, {loss!r}, {optimizer!r}")
            options = {"dtype": np.dtype(self.dtype).name, "device": "cuda", "tile": tile,
                       "symnet": symnet.__version__}
            _units[key] = (program, load_module(source, options), source)
        self.program, module, self._source = _units[key]
        self.function = getattr(module, self.program.name)
        self._host: dict[str, np.ndarray] = {}
        self._device: dict = {}
        self._batch_buffers: tuple[int, dict] | None = None
        self.upload()

    def source(self) -> str:
        """The generated CUDA source: kernels commented with their formulas, then the driver."""
        return self._source

    def _state(self) -> dict[str, np.ndarray]:
        """Host arrays by program name: ``W1`` → its Parameter's data, ``mW1`` → state."""
        by_key = dict(self.model.named_parameters())
        index = {id(p): k for k, p in enumerate(self.optimizer.params)}
        arrays = {}
        for name, key in self.derivation.graph.params.items():
            parameter = by_key[key]
            if parameter.data.dtype != self.dtype:
                raise TypeError(f"parameter {key} is {parameter.data.dtype}; the step was "
                                f"compiled for {np.dtype(self.dtype).name}: compile again")
            arrays[name] = parameter.data
            for prefix, array in self.optimizer.state[index[id(parameter)]].items():
                arrays[prefix + name] = array
        return arrays

    def upload(self) -> None:
        """Copy parameters and optimizer state to the GPU (again, after editing them)."""
        self._host = self._state()
        self._device = {n: self.cuda.to_device(np.ascontiguousarray(a))
                        for n, a in self._host.items()}

    def sync(self) -> None:
        """Copy parameters and optimizer state back into the host arrays, in place."""
        for name, array in self._host.items():
            device = self._device[name]
            if array.flags.c_contiguous:
                device.copy_to_host(array)
            else:
                array[...] = device.copy_to_host()

    def _buffers(self, batch: int) -> dict:
        """Temporaries on the device, allocated once per batch size."""
        if self._batch_buffers is None or self._batch_buffers[0] != batch:
            program = self.program
            leading = set(program.arguments[:2])
            temps = {n: self.cuda.device_array(kernels._shape(program.buffers[n].shape, batch),
                                               self.dtype)
                     for n in program.arguments
                     if n not in leading and n not in self._device and n in program.buffers}
            temps.update({n: self.cuda.device_array(1, np.float64)
                          for n in render.accumulators(program)})
            self._batch_buffers = (batch, temps)
        return self._batch_buffers[1]

    def __call__(self, inputs, targets) -> float:
        X = check_inputs(self.model, inputs, self.dtype)
        batch = X.shape[0]
        Y = check_targets(self.loss, targets, batch, self.derivation.graph.target.shape[0],
                          self.dtype)
        arrays = {**self._buffers(batch), **self._device}
        first, second = self.program.arguments[:2]
        arrays[first], arrays[second] = self.cuda.to_device(X), self.cuda.to_device(Y)
        hyper = {**self.optimizer.hyperparameters(), "t": self.optimizer.step_count + 1}
        value = self.function(*(arrays[n] for n in self.program.arguments),
                              *(hyper[s] if s == "t" else self.dtype(hyper[s])
                                for s in self.program.scalars),
                              *(arrays[n] for n in render.accumulators(self.program)))
        self.optimizer.step_count += 1
        return float(value)

    def __repr__(self) -> str:
        return f"CudaTrainStep({self.model!r}, {self.loss!r}, {self.optimizer!r})"
