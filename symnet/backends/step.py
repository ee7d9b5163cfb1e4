"""What every train step shares, and ``sn.compile``, which picks the step for the device.

`Step` owns what is the same on every backend: the check that the optimizer holds the
model's parameters, the batch and target checks, hyperparameters converted once per change
to the model's dtype, the error of a refused (non-finite) step, ``step_count``, and finding a
compiled step again — in this process, or through the step index on disk in a later one.
`symnet.backends.cpu.TrainStep`, `symnet.backends.cuda.CudaTrainStep` and
`symnet.backends.mpi.DistributedStep` supply only what differs: which kernels, and how
their arguments reach them.

Example:
    >>> import numpy as np, symnet as sn
    >>> sn.manual_seed(0)
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3))
    >>> opt = sn.optim.SGD(model.parameters(), lr=0.1)
    >>> step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    >>> X = np.random.default_rng(0).random((16, 4), np.float32)
    >>> y = np.arange(16) % 3
    >>> first = step(X, y)
    >>> later = [step(X, y) for _ in range(50)][-1]
    >>> later < first
    True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from symnet.backends import kernels, step_index
from symnet.backends.checks import check_inputs, check_targets, not_finite_message
from symnet.backends.denormals import check_denormals
from symnet.backends.threads import check_parallel
from symnet.nn.devices import backend, check_device
from symnet.nn.losses import Loss
from symnet.nn.module import Module
from symnet.nn.trace import input_layer
from symnet.optim import Optimizer
from symnet.symbolic.backprop import derive


class Step:
    """``step(X, y) -> float``: one training step; subclasses run it on their backend."""

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, *,
                 check_finite: bool = True):
        owned = [id(p) for p in model.parameters()]
        if [id(p) for p in optimizer.params] != owned:
            raise ValueError(f"{type(self).__name__}: the optimizer must hold exactly "
                             "model.parameters(), in order")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.dtype = model.dtype
        self.check_finite = bool(check_finite)
        self._first = input_layer(model)
        #: every module's mode when compiled: a step runs the equations of that mode
        self._modes = self._mode_of(model)
        #: the trace the step's equations come from (masks, buffers, batch counts)
        self._trace = kernels.traced(model)
        t = self._trace
        self._stateful = bool(t.masks or t.buffers or t.counted or t.min_batch > 1)
        self._modules = list(model.modules()) if kernels.mode_matters(model) else []
        self._derivation = None
        self._hyper: tuple | None = None  # (optimizer.defaults, names, scalars) last seen

    @staticmethod
    def _mode_of(model: Module) -> tuple[bool, ...]:
        return tuple(m.training for m in model.modules())

    def _check_mode(self) -> None:
        """A step compiled in one mode refuses to run in the other (dropout and batch
        statistics differ): switch back with model.train()/eval(), or compile again."""
        if self._modules and tuple(m.training for m in self._modules) != self._modes:
            was = "training" if self._modes[0] else "eval"
            raise RuntimeError(f"{type(self).__name__}: this step was compiled with the model "
                               f"in {was} mode, and its mode has changed since (dropout and "
                               "batch statistics differ): switch it back with model.train() "
                               "or model.eval(), or compile a step for the new mode")

    @property
    def derivation(self):
        """The `symnet.Derivation` this step was compiled from (derived on first use)."""
        if self._derivation is None:
            self._derivation = derive(self.model, self.loss, self.optimizer)
        return self._derivation

    def _unit(self, key: tuple, build: Callable[[], kernels.Unit]) -> kernels.Unit:
        """The compiled unit under ``key``: from this process, else from the step index on
        disk (no SymPy work at all), else ``build()`` — then remembered in both."""
        if key not in kernels.UNITS:
            unit = step_index.lookup(key, self.dtype)
            if unit is None:
                unit = build()
                step_index.store(key, unit)
            kernels.UNITS[key] = unit
        return kernels.UNITS[key]

    def _batch(self, inputs, targets, outputs: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked batch: ``X`` (N, in_features) and the targets, in the model's dtype."""
        self._check_mode()
        X = check_inputs(self.model, inputs, self.dtype, self._first)
        return X, check_targets(self.loss, targets, X.shape[0], outputs, self.dtype)

    def _scalars(self, names: tuple[str, ...]) -> list:
        """`Optimizer.scalars` for the next step, converted once per change of the
        hyperparameters' values (only ``t`` changes every step)."""
        defaults = self.optimizer.defaults
        if self._hyper is None or self._hyper[1] is not names or self._hyper[0] != defaults:
            self._hyper = (dict(defaults), names, self.optimizer.scalars(names, self.dtype, 0))
        scalars = self._hyper[2]
        if "t" in names:
            scalars = list(scalars)
            scalars[names.index("t")] = self.optimizer.step_count + 1
        return scalars

    def _finish(self, value, finite: bool = True, prediction=None) -> float:
        """Count the step, or raise the refused step's error (nothing was changed)."""
        if not finite:
            raise FloatingPointError(not_finite_message(
                self.optimizer.step_count + 1, float(value), self.loss, prediction))
        self.optimizer.step_count += 1
        return float(value)


def compile(model: Module, loss: Loss, optimizer: Optimizer, parallel: bool | str = "auto",
            device: str | None = None, *, check_finite: bool = True,
            denormals: str = "auto"):
    """Fuse forward, loss, backward and ``optimizer``'s update into one compiled step.

    The step runs where the model is (``model.device``), on that device's backend: for a
    model moved with ``model.to("cuda")`` it is a `symnet.backends.cuda.CudaTrainStep`, whose
    parameters and optimizer state stay on the GPU between steps (host reads — ``p.data``,
    ``state_dict()`` — fetch them).  ``device``, when given, must be the model's device (a
    ValueError otherwise): the model is never moved behind your back.

    ``parallel`` (CPU): ``"auto"`` (the default) runs the step on every thread it is given
    (`symnet.backends.threads`): the matrix products, split into blocks, and each loop, row
    operation, loss sum and optimizer update whose work reaches a measured size
    (`codegen.cpu.MIN_WORK`: as much as 131,072 entries of a bias add and ReLU), while
    smaller ones, and the bias gradients' column sums, stay serial, where starting the
    threads would cost more than they save;
    ``True`` puts every loop on the threads at any batch, ``False`` compiles a serial step
    (its products use OpenBLAS's own threads).

    ``check_finite`` (on by default) puts a check between the gradients and the updates: a
    step whose loss or any gradient is NaN/Inf raises ``FloatingPointError`` and changes
    nothing (parameters, optimizer state, ``step_count``).  ``check_finite=False`` compiles
    a kernel with no check at all, for the last microseconds: the check is one vectorised
    pass over the gradients (784-128-10, float32, one core: 1–5 % of a step at batch 256,
    and SGD at batch 1 goes from 12 to 20 µs, since SGD's weight update can then no longer
    be fused into its gradient's GEMM; ``benchmarks/check_finite_cost.py``).

    ``denormals``: ``"auto"`` (the default) flushes denormal floats (below 1.2e-38 in
    float32) to zero while a CPU step runs, as XLA does, on x86-64 CPUs (FTZ and DAZ, set in
    each thread the step runs on and put back as they were when it returns: the rest of
    the program keeps IEEE arithmetic); a model that fits its batch otherwise sends its
    gradients and Adam's moments through that range, where x86 CPUs take a slow path (5×
    slower steps: `symnet.backends.denormals`).  ``"flush"`` insists (a ValueError where
    the CPU cannot, or on a GPU, whose arithmetic has no slow path); ``"ieee"`` leaves the
    threads' mode alone: IEEE arithmetic, unless `sn.set_flush_denormal` set it.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 2))
        >>> step = sn.compile(m, sn.MSELoss(), sn.optim.SGD(m.parameters(), lr=0.1))
        >>> "def train_step(" in step.source()
        True
    """
    check_parallel(parallel)
    check_denormals(denormals)
    if device is not None:
        device = check_device(device)
        backend(device).require()  # no GPU: say so, rather than suggest moving the model
        if device != model.device:
            raise ValueError(f"compile: device={device!r}, but the model's parameters are on "
                             f"{model.device!r}: move the model first with "
                             f"model.to({device!r}), or leave device out to use the model's")
    return backend(model.device).compile(model, loss, optimizer, parallel=parallel,
                                         check_finite=check_finite, denormals=denormals)
