"""Input checks at the boundary: clear errors that name the layer or loss, never a Numba
traceback, and never a kernel run on data that would corrupt parameters.

Example:
    >>> import numpy as np, symnet as sn
    >>> check_inputs(sn.Sequential(sn.Linear(3, 2)), np.ones((2, 4)), np.float32)
    Traceback (most recent call last):
    ...
    ValueError: Linear(3, 2) (layer 0) got input with 4 features, expected 3
"""

from __future__ import annotations

import numpy as np
from numba import njit

from symnet.nn.module import Module
from symnet.nn.trace import input_layer


def _array(value, where, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{where()} got {what} that is not a rectangular array: {e}") \
            from None


@njit(cache=True, fastmath={"reassoc"})
def _nonfinite_sum(flat):
    """``v * 0`` is 0 for finite ``v`` and NaN for NaN or ±Inf, so the sum is 0 exactly when
    every entry is finite.  Reassociation lets the sum vectorise; NaN and Inf keep their IEEE
    meaning (no ``nnan``/``ninf``), and nothing is allocated: ``np.isfinite(a).all()`` builds
    a bool array the size of the batch on every call."""
    zero = flat.dtype.type(0)  # a float32 zero keeps a float32 scan float32 (8 lanes, not 4)
    acc = zero
    for k in range(flat.size):
        acc += flat[k] * zero
    return acc


@njit(cache=True)
def _first_outside(labels, outputs):
    """The index of the first label outside [0, outputs), or -1, in one compiled pass
    (``labels.min()`` and ``labels.max()`` took 4 µs of a 30 µs batch-1 step)."""
    for k in range(labels.size):
        if labels[k] < 0 or labels[k] >= outputs:
            return k
    return -1


def _convert(array: np.ndarray, dtype, where, what: str) -> np.ndarray:
    """``array`` as C-contiguous ``dtype``; finite values beyond its range are an error.

    ``where`` is a function naming the layer or loss: the name is only built for an error
    (a step at batch 1 takes tens of microseconds, so the checks must cost less).
    """
    if array.dtype == dtype and array.flags.c_contiguous:
        converted = array
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, in our words
            converted = np.ascontiguousarray(array, dtype=dtype)
    if _nonfinite_sum(converted.reshape(-1)) != 0:
        beyond = " (or values beyond the range of " + np.dtype(dtype).name + ")" \
            if np.isfinite(array).all() else ""
        raise ValueError(f"{where()} got {what} containing NaN or Inf{beyond}")
    return converted


def check_inputs(model: Module, inputs, dtype, first: tuple | None = None) -> np.ndarray:
    """A C-contiguous (N, in_features) array of ``dtype``, or ValueError/TypeError.

    ``first`` is ``(key, layer)`` of the layer that fixes the input width
    (`symnet.nn.trace.input_layer`), when the caller knows it.
    """
    key, layer = first or input_layer(model)

    def where() -> str:
        return f"{layer!r} (layer {key})"

    array = _array(inputs, where, "input")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{where()} got input of dtype {array.dtype}, expected numbers")
    if array.ndim != 2:
        raise ValueError(f"{where()} expects input of shape (N, {layer.in_features}), "
                         f"got shape {array.shape}")
    if array.shape[1] != layer.in_features:
        raise ValueError(f"{where()} got input with {array.shape[1]} features, "
                         f"expected {layer.in_features}")
    if array.shape[0] == 0:
        raise ValueError(f"{where()} got an empty batch (0 samples)")
    return _convert(array, dtype, where, "input")


def check_targets(loss, target, batch: int, outputs: int, dtype) -> np.ndarray:
    """Class indices in [0, outputs) for index losses, else an (N, outputs) float array."""
    def where() -> str:
        return repr(loss)

    array = _array(target, where, "targets")
    if loss.target_kind == "index":
        if array.dtype.kind not in "iu" or array.shape != (batch,):
            raise ValueError(f"{loss!r} expects integer class indices of shape ({batch},), "
                             f"got {array.dtype} array of shape {array.shape}")
        if array.dtype.kind == "i" or array.dtype.itemsize < 8:  # int64 holds every value
            labels = np.ascontiguousarray(array, dtype=np.int64)
            bad = _first_outside(labels, outputs)
            outside = labels[bad] if bad >= 0 else None
        else:  # uint64: judged before conversion, which would wrap values past 2**63
            wrong = (array < 0) | (array >= outputs)
            outside = array[wrong][0] if wrong.any() else None
            labels = np.ascontiguousarray(array, dtype=np.int64)
        if outside is not None:
            raise ValueError(f"{loss!r}: label {outside} is outside [0, {outputs})")
        return labels
    if array.shape == (batch,) and outputs == 1:
        array = array.reshape(batch, 1)
    if array.shape != (batch, outputs):
        raise ValueError(f"{loss!r} expects targets of shape ({batch}, {outputs}), "
                         f"got {array.shape}")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{loss!r} got targets of dtype {array.dtype}, expected numbers")
    return _convert(array, dtype, where, "targets")


def not_finite_message(step: int, value: float, loss=None, prediction=None) -> str:
    """Why train step ``step`` was refused, in the user's words (every backend says it so).

    ``prediction`` (the step's Ŷ, when the backend has it at hand) lets a loss that needs its
    prediction in a range (BCELoss: [0, 1]) say that it left it, which no learning rate fixes.

    Example:
        >>> import numpy as np, symnet as sn
        >>> print(not_finite_message(3, float("nan"), sn.BCELoss(), np.array([0.5, 1.7])))
        train step 3: the loss became nan: BCELoss(reduction='mean') needs predictions in \
[0.0, 1.0], and the model gave 0.5 to 1.7 (end the model with sn.Sigmoid(), or use \
sn.BCEWithLogitsLoss on its raw outputs); parameters and optimizer state were left unchanged
    """
    what = f"the loss became {value}" if not np.isfinite(value) else \
        f"a gradient became NaN or Inf (loss {value:.6g})"
    unchanged = "parameters and optimizer state were left unchanged"
    bounds = getattr(loss, "prediction_range", None)
    if bounds is not None and prediction is not None and np.size(prediction):
        low, high = float(np.nanmin(prediction)), float(np.nanmax(prediction))
        if low < bounds[0] or high > bounds[1]:
            return (f"train step {step}: {what}: {loss!r} needs predictions in "
                    f"[{bounds[0]}, {bounds[1]}], and the model gave {low:.3g} to {high:.3g} "
                    f"(end the model with sn.Sigmoid(), or use sn.BCEWithLogitsLoss on its "
                    f"raw outputs); {unchanged}")
    return f"train step {step}: {what}; {unchanged} (lower the learning rate)"
