"""Parameters: a learnable array of fixed shape and dtype, its gradient, and its device copy.

Example:
    >>> import numpy as np, symnet as sn
    >>> p = sn.Parameter(np.zeros((2, 3), np.float32))
    >>> p.shape, p.dtype, p.device
    ((2, 3), dtype('float32'), 'cpu')
"""

from __future__ import annotations

import numpy as np

from symnet.nn.devices import Storage, backend

DTYPES = (np.float32, np.float64)


def check_dtype(dtype) -> type:
    """Return numpy's float32 or float64 type for ``dtype``, or raise a clear TypeError."""
    try:
        resolved = np.dtype(dtype).type
    except TypeError:
        resolved = None
    if resolved not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


class Parameter:
    """A learnable array and its accumulated gradient (``None`` until a backward pass).

    On a device (after ``module.to("cuda")``) the parameter owns a device copy of its values,
    a `symnet.nn.devices.Storage` its backend made (CUDA's `Mirror` also knows the device
    copies of the optimizer state a CUDA step keeps beside them, so moving the parameter home
    brings those home too).  The step trains the copies in place: between steps nothing
    crosses the bus.  ``data`` is still the host numpy array: reading it first copies the
    values back when the GPU's are newer, and since the caller may then write into it, the GPU
    copy is refreshed from it before the device next reads it.  Hold the parameter, not
    ``p.data``, across steps: an array fetched before a step does not see that step.

    Example:
        >>> import numpy as np, symnet as sn
        >>> p = sn.Parameter(np.zeros((2, 3), np.float32))
        >>> p.shape, p.device
        ((2, 3), 'cpu')
    """

    def __init__(self, data: np.ndarray):
        array = np.asarray(data)
        if array.dtype.type not in DTYPES:
            raise TypeError(f"Parameter: dtype must be float32 or float64, got {array.dtype} "
                            f"(convert with .astype(np.float32))")
        self._host = np.ascontiguousarray(array)
        # The declared shape and dtype: fixed, so every kernel call can check the array it
        # is handed (`kernel_array`) even after in-place numpy changes (``a.shape = …``).
        self._shape, self._dtype = self._host.shape, self._host.dtype
        self._storage: Storage | None = None  # the device copy, while on a device
        self._owner: tuple | None = None  # (module, name) once a module registers it
        self.grad: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        """The values as a host array (current: copied back from the GPU if newer there)."""
        if self._storage is not None:
            self._storage.host(write=True)
        return self._host

    @data.setter
    def data(self, value: np.ndarray) -> None:
        """New values of the same shape, adopted as a C-contiguous array of the parameter's
        dtype (a converted copy when needed); any other shape is a ValueError, and nothing
        changes.  (``module.to(dtype)`` changes the dtype.)"""
        self._replace(self.checked(value, "data"))

    def checked(self, value, what: str = "values") -> np.ndarray:
        """``value`` as a C-contiguous array of this parameter's shape and dtype, or a clear
        error naming the parameter (nothing is changed either way).

        Example:
            >>> import numpy as np, symnet as sn
            >>> sn.Linear(4, 16).weight.checked(np.zeros((2, 4)))
            Traceback (most recent call last):
            ...
            ValueError: Linear(4, 16).weight: values of shape (2, 4) given, but the parameter \
has shape (16, 4) (a parameter's shape is fixed: build a new layer for another shape)
        """
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged lists
            raise ValueError(f"{self._label}: {what} is not a rectangular array: {e}") from None
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{self._label}: {what} of dtype {array.dtype} given, expected "
                            f"numbers ({self.dtype})")
        if array.shape != self._shape:
            raise ValueError(f"{self._label}: {what} of shape {array.shape} given, but the "
                             f"parameter has shape {self._shape} (a parameter's shape is fixed: "
                             f"build a new layer for another shape)")
        return np.ascontiguousarray(array, dtype=self._dtype)

    @property
    def _label(self) -> str:
        """``Linear(4, 16).weight`` once registered (errors name it), else ``Parameter``."""
        if self._owner is None:
            return "Parameter"
        module, name = self._owner
        return f"{module!r}.{name}" if not isinstance(module, str) else f"{module}.{name}"

    def kernel_array(self, *, fetch: bool = False, write: bool = False) -> np.ndarray:
        """The host array, after checking that it still has the declared shape, dtype and
        layout: no kernel is handed an array it did not expect.

        As stored (no copy from the GPU) unless ``fetch``: then a GPU copy's newer values are
        copied back first, for a host kernel that reads them (the eager path on a cuda
        model); ``write`` says that kernel changes them, so the GPU copy is refreshed before
        the device next reads it."""
        if fetch and self._storage is not None:
            self._storage.host(write=write)
        a = self._host
        if a.shape != self._shape or a.dtype != self._dtype or not a.flags.c_contiguous:
            raise ValueError(f"{self._label}: its array was changed in place to shape {a.shape}"
                             f", dtype {a.dtype}{'' if a.flags.c_contiguous else ', strided'}; "
                             f"expected C-contiguous {self._dtype} of shape {self._shape} "
                             f"(assign new values with p.data = …)")
        return a

    def _replace(self, value: np.ndarray) -> None:
        """Hold ``value`` (already checked or converted) from now on, on every device."""
        if self._storage is not None:  # a new array: a new copy on the GPU
            self._storage = self._storage.replaced(value)
        self._host = value
        self._shape, self._dtype = value.shape, value.dtype

    def _retype(self, dtype) -> None:
        """Convert to ``dtype`` (`Module.to`), keeping the shape; the gradient follows."""
        self._replace(np.ascontiguousarray(self.data, dtype=dtype))
        self.grad = None if self.grad is None else self.grad.astype(dtype)

    def _read(self) -> np.ndarray:
        """The current values for reading only (the GPU copy stays valid)."""
        return self._host if self._storage is None else self._storage.host(write=False)

    def _assign(self, values: np.ndarray) -> None:
        """Overwrite the values in place, on the host and (at once) on the GPU."""
        if self._storage is None:
            self._host[...] = values
        else:
            self._storage.assign(values)

    def _move(self, device: str) -> None:
        """Give the values a copy on ``device`` (its backend's `Storage`), or bring them
        home and drop the copy (``"cpu"``)."""
        where = self.device
        if device == where:
            return
        if self._storage is not None:
            self._storage.release()
            self._storage = None
        if device != "cpu":
            self._storage = backend(device).storage(self._host)

    @property
    def device(self) -> str:
        """``"cpu"``, or ``"cuda"`` while the values live on the GPU."""
        return "cpu" if self._storage is None else self._storage.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def __getstate__(self) -> dict:
        """For pickle and ``copy.deepcopy``: the current values and the device, no GPU handle."""
        return {"data": self._read(), "grad": self.grad, "device": self.device,
                "owner": None if self._owner is None else (repr(self._owner[0]), self._owner[1])}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["data"])
        self.grad = state["grad"]
        self._owner = state.get("owner")
        self._move(state["device"])

    @property
    def T(self) -> Transposed:  # noqa: N802 - torch's and numpy's name
        """The transpose: in a traced ``forward``, a factor of a product (``self.W.T @ x``);
        as an array, ``p.data.T``."""
        return Transposed(self)

    def __array__(self, dtype=None, copy=None):
        values = self._read()
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        where = "" if self._storage is None else f", device={self._storage.name!r}"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{where})"


class Transposed:
    """``parameter.T``: symbolic in a traced ``forward``, ``parameter.data.T`` as an array."""

    def __init__(self, parameter: Parameter):
        self.parameter = parameter

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.parameter.data.T, dtype=dtype)

    def __repr__(self) -> str:
        return f"{self.parameter!r}.T"
