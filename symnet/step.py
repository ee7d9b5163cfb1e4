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

from codegen.lower import lower
from symnet import kernels
from symnet.backprop import derive
from symnet.checks import check_inputs, check_targets
from symnet.graph import N
from symnet.losses import Loss
from symnet.module import Module
from symnet.optim import Optimizer


class TrainStep:
    """``step(X, y) -> float``: one fused training step; parameters update in place."""

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, parallel: bool = False):
        owned = {id(p) for p in model.parameters()}
        if [id(p) for p in optimizer.params] != [id(p) for p in model.parameters()] or \
                len(owned) != len(optimizer.params):
            raise ValueError("compile: the optimizer must hold exactly model.parameters(), "
                             "in order")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.dtype = model.dtype
        self.derivation = derive(model, loss, optimizer)
        graph = self.derivation.graph
        leading, one_hot = kernels.target_arguments(loss)
        key = ("step", kernels.structure_key(model, loss, self.dtype), parallel,
               type(optimizer).__name__, tuple(str(eq) for eq in self.derivation.updates))
        if key not in kernels._units:
            eqs = self.derivation.forward + self.derivation.backward + self.derivation.updates
            keep = frozenset(self.derivation.state_symbols())
            program = lower("train_step", eqs, N, leading, keep, one_hot)
            kernels._units[key] = kernels.compile_unit(
                [program], self.dtype, parallel, f"symnet train step: {model!r}, {loss!r}, "
                f"{optimizer!r}")
        self.unit = kernels._units[key]
        self.program = self.unit.programs["train_step"]
        self.function = self.unit.functions["train_step"]
        self._keys = graph.params
        self._cache: tuple | None = None

    def source(self) -> str:
        """The generated Numba source, commented with the formula of each kernel."""
        return self.unit.source

    def _state(self) -> dict[str, np.ndarray]:
        by_key = dict(self.model.named_parameters())
        index = {id(p): k for k, p in enumerate(self.optimizer.params)}
        arrays = {}
        for name, key in self._keys.items():
            parameter = by_key[key]
            if parameter.data.dtype != self.dtype:
                raise TypeError(f"parameter {key} is {parameter.data.dtype}; the step was "
                                f"compiled for {np.dtype(self.dtype).name}: compile again")
            arrays[name] = parameter.data
            for prefix, array in self.optimizer.state[index[id(parameter)]].items():
                arrays[prefix + name] = array
        return arrays

    def __call__(self, inputs, targets) -> float:
        X = check_inputs(self.model, inputs, self.dtype)
        batch = X.shape[0]
        Y = check_targets(self.loss, targets, batch, self.derivation.graph.target.shape[0],
                          self.dtype)
        identity = (batch, [id(p.data) for p in self.optimizer.params])
        if self._cache is None or self._cache[0] != identity:
            leading = self.program.arguments[:2]
            args = self.unit.buffers("train_step", batch,
                                     {leading[0]: X, leading[1]: Y, **self._state()})
            self._cache = (identity, args[2:])
        hyper = {**self.optimizer.hyperparameters(), "t": self.optimizer.step_count + 1}
        # Scalars in the model's dtype, so a float32 update loop stays float32.
        scalars = [hyper[s] if s == "t" else self.dtype(hyper[s]) for s in self.program.scalars]
        value = self.function(X, Y, *self._cache[1], *scalars)
        self.optimizer.step_count += 1
        return float(value)


def compile(model: Module, loss: Loss, optimizer: Optimizer, parallel: bool = False,
            device: str = "cpu"):
    """Fuse forward, loss, backward and ``optimizer``'s update into one compiled step.

    ``device="cuda"`` returns a `symnet.cuda.CudaTrainStep`: parameters and optimizer
    state stay on the GPU between steps; call its ``sync()`` before reading them on the host.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 2))
        >>> step = sn.compile(m, sn.MSELoss(), sn.optim.SGD(m.parameters(), lr=0.1))
        >>> "np.dot" in step.source()
        True
    """
    if device == "cuda":
        from symnet.cuda import CudaTrainStep

        return CudaTrainStep(model, loss, optimizer)
    if device != "cpu":
        raise ValueError(f"compile: device must be 'cpu' or 'cuda', got {device!r}")
    return TrainStep(model, loss, optimizer, parallel)
