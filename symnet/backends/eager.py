"""The PyTorch-style front door: ``model(X)``, ``loss_fn(out, y)``, ``loss.backward()``,
``optimizer.step()`` — each a call into compiled kernels.

``model(X)`` remembers (weakly) which model and input produced its output, so the loss can
run the gradient kernel; ``backward()`` adds the gradients into ``p.grad`` (accumulating
until ``zero_grad``, as in PyTorch).

Example:
    >>> import numpy as np, symnet as sn
    >>> sn.manual_seed(0)
    >>> model = sn.Sequential(sn.Linear(3, 2))
    >>> out = model(np.ones((4, 3), np.float32))
    >>> out.shape
    (4, 2)
"""

from __future__ import annotations

import weakref

import numpy as np

from symnet.backends import kernels, layer_state
from symnet.backends.checks import check_inputs, check_targets
from symnet.nn.module import Module

_tape: dict[int, tuple] = {}


def remember(output: np.ndarray, model: Module, inputs: np.ndarray,
             masks: dict | None = None) -> None:
    """Keep what produced ``output`` (and the dropout masks it used) for its loss."""
    key = id(output)
    _tape[key] = (weakref.ref(output), model, inputs, masks or {})
    weakref.finalize(output, _tape.pop, key, None)


def forward(model: Module, inputs) -> np.ndarray:
    """Run the model's compiled forward kernel on a batch-major (N, features) array."""
    dtype = model.dtype
    X = check_inputs(model, inputs, dtype)
    unit = kernels.model_unit(model, None, dtype)
    t = kernels.traced(model)  # once: each look walks the model
    layer_state.check_batch(t, X.shape[0])
    masks = layer_state.draw_masks(t, X.shape[0], dtype)
    provided = {kernels.INPUT: X, **_parameters(unit, model, t), **masks}
    args = unit.buffers("forward", X.shape[0], provided)
    unit.functions["forward"](*args)
    layer_state.after_training_call(t)
    output = unit.buffers("forward", X.shape[0], provided)[
        unit.programs["forward"].arguments.index(unit.graph.output)].copy()
    remember(output, model, X, masks)
    return output


def _parameters(unit, model: Module, t) -> dict[str, np.ndarray]:
    """The arrays of the parameters and buffers ``unit``'s programs take, by name."""
    by_key = dict(model.named_parameters())
    return {**{name: by_key[key].kernel_array(fetch=True) for name, key in
               unit.graph.params.items()}, **layer_state.buffer_arrays(model, t)}


class LossValue:
    """A computed loss: a float (``float(loss)``, ``loss.item()``) that can ``backward()``."""

    def __init__(self, value: float, gradients: dict | None):
        self.value = value
        self._gradients = gradients

    def item(self) -> float:
        return self.value

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"LossValue({self.value:.6g})"

    def backward(self) -> None:
        """Add dL/dθ into every parameter's ``.grad``."""
        if self._gradients is None:
            raise RuntimeError("backward() was already called on this loss (its gradients "
                               "are in p.grad); compute the loss again to backpropagate again")
        for parameter, grad in self._gradients.items():
            parameter.grad = grad.copy() if parameter.grad is None else parameter.grad + grad
        self._gradients = None


def loss_value(loss, output, target) -> LossValue:
    """Evaluate ``loss`` on a model's output; gradients are computed in the same kernel."""
    entry = _tape.get(id(output))
    if entry is None or entry[0]() is not output:
        raise ValueError(f"{loss!r} needs the array returned by model(X) (it recomputes the "
                         "forward pass in its gradient kernel); got an unrelated array")
    _, model, X, masks = entry
    dtype = model.dtype
    unit = kernels.model_unit(model, loss, dtype)
    target_array = check_targets(loss, target, X.shape[0], output.shape[1], dtype)
    leading = unit.programs["gradients"].arguments[:2]
    arrays = _parameters(unit, model, kernels.traced(model))
    provided = {leading[0]: X, leading[1]: target_array, **arrays, **masks}
    args = unit.buffers("gradients", X.shape[0], provided)
    value = float(unit.functions["gradients"](*args))
    names = unit.programs["gradients"].arguments
    by_key = dict(model.named_parameters())
    gradients = {by_key[key]: args[names.index("d" + name)].copy()
                 for name, key in unit.graph.params.items()}
    return LossValue(value, gradients)


def optimizer_step(optimizer) -> None:
    """One update of every parameter that has a gradient (PyTorch skips the others).

    Every gradient is checked first (shape, and finite): a NaN or Inf gradient raises
    FloatingPointError and changes nothing, as the fused step's ``check_finite`` does.
    """
    work = [(p, p.checked(p.grad, "grad"), optimizer.state_arrays(p, state))
            for p, state in zip(optimizer.params, optimizer.state) if p.grad is not None]
    if not work:
        return
    for p, grad, _ in work:
        if not np.isfinite(grad).all():
            raise FloatingPointError(
                f"{type(optimizer).__name__}.step: the gradient of {p._label} contains NaN or "
                f"Inf; parameters and optimizer state were left unchanged")
    optimizer.step_count += 1
    for parameter, grad, states in work:
        unit = kernels.optimizer_unit(optimizer, parameter.dtype)
        name = "update_vector" if len(parameter.shape) == 1 else "update_matrix"
        scalars = optimizer.scalars(unit.programs[name].scalars, parameter.dtype.type,
                                    optimizer.step_count)
        unit.functions[name](parameter.kernel_array(fetch=True, write=True), grad, *states,
                             *scalars)
