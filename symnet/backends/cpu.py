"""``sn.compile``: forward, loss, backward and update fused into one compiled function.

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

import numpy as np

from symnet.backends import kernels
from symnet.backends import step_index
from symnet.symbolic.backprop import derive
from symnet.backends.checks import _first_linear, check_inputs, check_targets, not_finite_message
from symnet.nn.losses import Loss
from symnet.nn.module import Module, check_device
from symnet.optim import Optimizer


class TrainStep:
    """``step(X, y) -> float``: one fused training step; parameters update in place."""

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, parallel: bool = False,
                 *, check_finite: bool = True):
        owned = {id(p) for p in model.parameters()}
        if [id(p) for p in optimizer.params] != [id(p) for p in model.parameters()] or \
                len(owned) != len(optimizer.params):
            raise ValueError("compile: the optimizer must hold exactly model.parameters(), "
                             "in order")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.dtype = model.dtype
        self.check_finite = bool(check_finite)
        self._derivation = None
        # The key needs no derivation, so a step compiled before (in this process or, via
        # the index on disk, in an earlier one) is reused without any SymPy work.
        key = ("step", kernels.structure_key(model, loss, self.dtype), parallel,
               self.check_finite, kernels.update_signature(optimizer))
        if key not in kernels._units:
            unit = step_index.lookup(key, self.dtype)
            if unit is None:
                unit = self._compile(parallel)
                step_index.store(key, unit)
            kernels._units[key] = unit
        self.unit = kernels._units[key]
        self.program = self.unit.programs["train_step"]
        self.function = self.unit.functions["train_step"]
        self._keys = self.unit.params
        self._cache: tuple | None = None
        self._first = None  # the first Linear, found on the first call
        self._hyper: tuple | None = None  # (optimizer.defaults, their scalars) last seen

    def _scalars(self) -> list:
        """Hyperparameters in the program's order, converted once per change of their values:
        in the model's dtype, so a float32 update loop stays float32; ``t`` the next step."""
        defaults = self.optimizer.defaults
        if self._hyper is None or self._hyper[0] != defaults:
            hyper = self.optimizer.hyperparameters()
            self._hyper = (dict(defaults), [None if s == "t" else self.dtype(hyper[s])
                                            for s in self.program.scalars])
        scalars = self._hyper[1]
        if "t" in self.program.scalars:
            scalars = list(scalars)
            scalars[self.program.scalars.index("t")] = self.optimizer.step_count + 1
        return scalars

    @property
    def derivation(self):
        """The `symnet.Derivation` this step was compiled from (derived on first use)."""
        if self._derivation is None:
            self._derivation = derive(self.model, self.loss, self.optimizer)
        return self._derivation

    def _compile(self, parallel: bool) -> kernels.Unit:
        d = self.derivation
        program = kernels.step_program(d, self.loss, self.check_finite, gemm_updates=True)
        unit = kernels.compile_unit([program], self.dtype, parallel, f"symnet train step: "
                                    f"{self.model!r}, {self.loss!r}, {self.optimizer!r}")
        unit.params, unit.outputs = dict(d.graph.params), int(d.graph.target.shape[0])
        return unit

    def _array(self, name: str) -> np.ndarray | None:
        """The last step's array ``name`` (``"Yhat"``), if the step keeps one by that name."""
        arguments = self.program.arguments[2:]
        if self._cache is None or name not in arguments:
            return None
        return self._cache[1][arguments.index(name)]

    def source(self) -> str:
        """The generated Numba source, commented with the formula of each kernel."""
        return self.unit.source

    def _state(self) -> dict[str, np.ndarray]:
        return {name: array for name, (array, _) in kernels.step_state(
            self.model, self.optimizer, self._keys, self.dtype, "cpu").items()}

    def __call__(self, inputs, targets) -> float:
        if self._first is None:
            self._first = _first_linear(self.model)
        X = check_inputs(self.model, inputs, self.dtype, self._first)
        batch = X.shape[0]
        Y = check_targets(self.loss, targets, batch, self.unit.outputs, self.dtype)
        # Which arrays the parameters hold now (p._host, not p.data: no device sync here),
        # with their shapes: an array reshaped in place is checked again before any kernel.
        identity = (batch, [(id(p._host), p._host.shape, p._mirror is None)
                            for p in self.optimizer.params])
        if self._cache is None or self._cache[0] != identity:
            leading = self.program.arguments[:2]
            args = self.unit.buffers("train_step", batch,
                                     {leading[0]: X, leading[1]: Y, **self._state()})
            self._cache = (identity, args[2:])
        value = self.function(X, Y, *self._cache[1], *self._scalars())
        if self.check_finite:
            value, finite = value
            if not finite:
                prediction = self._array("Yhat")
                raise FloatingPointError(not_finite_message(
                    self.optimizer.step_count + 1, value, self.loss, prediction))
        self.optimizer.step_count += 1
        return float(value)


def compile(model: Module, loss: Loss, optimizer: Optimizer, parallel: bool = False,
            device: str | None = None, *, check_finite: bool = True):
    """Fuse forward, loss, backward and ``optimizer``'s update into one compiled step.

    The step runs where the model is (``model.device``).  For a model moved with
    ``model.to("cuda")`` it is a `symnet.backends.cuda.CudaTrainStep`: parameters and optimizer state
    stay on the GPU between steps, and host reads (``p.data``, ``state_dict()``) fetch them.
    ``device``, when given, must be the model's device (a ValueError otherwise): the model is
    never moved behind your back.

    ``check_finite`` (on by default) puts a check between the gradients and the updates: a
    step whose loss or any gradient is NaN/Inf raises ``FloatingPointError`` and changes
    nothing (parameters, optimizer state, ``step_count``).  ``check_finite=False`` compiles
    a kernel with no check at all, for the last microseconds: the check is one vectorised
    pass over the gradients (784-128-10, float32, one core: 1–5 % of a step at batch 256,
    and SGD at batch 1 goes from 12 to 20 µs, since SGD's weight update can then no longer
    be fused into its gradient's GEMM; ``benchmarks/check_finite_cost.py``).

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 2))
        >>> step = sn.compile(m, sn.MSELoss(), sn.optim.SGD(m.parameters(), lr=0.1))
        >>> "def train_step(" in step.source()
        True
    """
    if device is not None:
        device = check_device(device)
        if device == "cuda":
            from symnet.backends.cuda import require

            require()  # no GPU: say so, rather than suggest moving the model there
        if device != model.device:
            raise ValueError(f"compile: device={device!r}, but the model's parameters are on "
                             f"{model.device!r}: move the model first with "
                             f"model.to({device!r}), or leave device out to use the model's")
    if model.device == "cuda":
        from symnet.backends.cuda import CudaTrainStep

        if parallel:
            raise ValueError("compile: parallel=True runs the CPU kernels on several threads; "
                             "it does not apply to a model on 'cuda'")
        return CudaTrainStep(model, loss, optimizer, check_finite=check_finite)
    return TrainStep(model, loss, optimizer, parallel, check_finite=check_finite)
