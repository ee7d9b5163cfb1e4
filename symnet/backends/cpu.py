"""The CPU backend: the fused train step as one ``@njit`` function, and the eager kernels.

Example:
    >>> import numpy as np, symnet as sn
    >>> sn.manual_seed(0)
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3))
    >>> step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    >>> type(step).__name__, step.check_finite
    ('TrainStep', True)
"""

from __future__ import annotations

import numba
import numpy as np

from codegen.cpu import THIN_PRODUCTS
from symnet.backends import eager, kernels, layer_state
from symnet.backends.denormals import cpu_flushes
from symnet.backends.step import Step
from symnet.nn.devices import register
from symnet.nn.losses import Loss
from symnet.nn.module import Module
from symnet.optim import Optimizer


class TrainStep(Step):
    """``step(X, y) -> float``: one fused training step; parameters update in place.

    Two kernels of one step: the serial one, and (``parallel`` "auto" or True, with more
    than one thread in Numba's pool) the threaded one, compiled the first time a batch
    reaches the size where some loop can gain from threads or a product is large enough
    for OpenBLAS to thread it (`codegen.cpu.threads_from`: batch 1 for 784-128-10, 64 for
    6-24-5) — a step that never gets there (a small model's) never pays its compile time.
    Both compute the same values (reductions and split products to rounding).
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer,
                 parallel: bool | str = "auto", *, check_finite: bool = True,
                 denormals: str = "auto"):
        super().__init__(model, loss, optimizer, check_finite=check_finite)
        #: whether the step flushes denormals to zero while it runs (`sn.compile`)
        self.flush_denormal = cpu_flushes(denormals)
        # The key needs no derivation, so a step compiled before (in this process or, via
        # the index on disk, in an earlier one) is reused without any SymPy work.
        self._key = ("step", kernels.structure_key(model, loss, self.dtype),
                     self.check_finite, kernels.update_signature(optimizer),
                     self.flush_denormal)
        self.parallel = parallel
        self.unit = self._kernel(False)
        self.program = self.unit.programs["train_step"]
        self.function = self.unit.functions["train_step"]
        threaded = parallel is not False and numba.config.NUMBA_NUM_THREADS > 1
        #: the smallest batch that runs the threaded kernel (None: none does)
        self.threads_from = (1 if parallel is True else self.unit.threads_from) \
            if threaded else None
        self._cache: tuple | None = None

    def _kernel(self, parallel: bool | str) -> kernels.Unit:
        return self._unit(self._key + (parallel,), lambda: self._compile(parallel))

    def _compile(self, parallel: bool | str) -> kernels.Unit:
        d = self.derivation
        program = kernels.step_program(d, self.loss, self.check_finite, gemm_updates=True,
                                       thin_products=THIN_PRODUCTS, column_totals=True)
        unit = kernels.compile_unit([program], self.dtype, parallel, f"symnet train step: "
                                    f"{self.model!r}, {self.loss!r}, {self.optimizer!r}",
                                    flush=self.flush_denormal)
        unit.params, unit.outputs = dict(d.graph.params), int(d.graph.target.shape[0])
        return unit

    def _array(self, name: str) -> np.ndarray | None:
        """The last step's array ``name`` (``"Yhat"``), if the step keeps one by that name."""
        arguments = self.program.arguments[2:]
        if self._cache is None or name not in arguments:
            return None
        return self._cache[2][arguments.index(name)]

    def source(self, threaded: bool = False) -> str:
        """The generated Numba source, commented with the formula of each kernel; with
        ``threaded=True``, the threaded kernel's (compiled now if it was not yet)."""
        if threaded and self.parallel is not False:
            return self._kernel(self.parallel).source
        return self.unit.source

    def __call__(self, inputs, targets) -> float:
        X, Y = self._batch(inputs, targets, self.unit.outputs)
        batch = X.shape[0]
        # Which arrays the parameters hold now (as stored: no device sync here), with their
        # shapes: an array reshaped in place is checked again before any kernel sees it.
        identity = (batch, [(id(p._host), p._host.shape, p._storage is None)
                            for p in self.optimizer.params])
        buffers = {}
        if self._stateful:  # dropout masks, running statistics, batch counts
            layer_state.check_batch(self._trace, batch)
            buffers = layer_state.buffer_arrays(self.model, self._trace)
            identity += (tuple(id(b) for b in buffers.values()),)
        if self._cache is None or self._cache[0] != identity:
            state = kernels.step_state(self.model, self.optimizer, self.unit.params,
                                       self.dtype, "cpu")
            wide = self.threads_from is not None and batch >= self.threads_from
            unit = self._kernel(self.parallel) if wide else self.unit
            leading = self.program.arguments[:2]
            args = unit.buffers("train_step", batch, {
                leading[0]: X, leading[1]: Y, **{n: a for n, (a, _) in state.items()},
                **buffers})
            function = unit.functions["train_step"] if wide else self.function
            named = dict(zip(self.program.arguments, args))
            self._cache = (identity, function, args[2:], named)
        if self._stateful:
            layer_state.draw_masks(self._trace, batch, self.dtype, into=self._cache[3])
        value = self._cache[1](X, Y, *self._cache[2], *self._scalars(self.program.scalars))
        if not self.check_finite:
            if self._stateful:
                layer_state.after_training_call(self._trace)
            return self._finish(value)
        value, finite = value
        if finite and self._stateful:
            layer_state.after_training_call(self._trace)
        return self._finish(value, finite, None if finite else self._array("Yhat"))


class CpuBackend:
    """The CPU's entry in the device table: host arrays, ``@njit`` kernels."""

    name = "cpu"

    def require(self) -> None:
        return None

    def storage(self, host: np.ndarray) -> None:
        return None  # the host array is the storage

    def forward(self, model: Module, inputs) -> np.ndarray:
        return eager.forward(model, inputs)

    def loss(self, loss: Loss, output, target) -> eager.LossValue:
        return eager.loss_value(loss, output, target)

    def update(self, optimizer: Optimizer) -> None:
        eager.optimizer_step(optimizer)

    def compile(self, model: Module, loss: Loss, optimizer: Optimizer, *,
                parallel: bool | str, check_finite: bool, denormals: str = "auto") -> TrainStep:
        return TrainStep(model, loss, optimizer, parallel, check_finite=check_finite,
                         denormals=denormals)


register(CpuBackend())
