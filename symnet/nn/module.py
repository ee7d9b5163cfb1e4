"""Modules own parameters (numpy arrays) and say which operation they contribute.

Nothing is computed at declaration: `symnet.symbolic.graph` turns a model into equations, and the
compiled kernels run them.

Devices: ``model.to("cuda")`` gives every parameter a copy on the GPU (a `symnet.backends.cuda.Mirror`)
which the compiled CUDA step trains in place; ``Parameter.data`` and ``state_dict()`` always
hand out host numpy arrays, copied back from the GPU when the device values are newer.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

_rng = np.random.default_rng()
DTYPES = (np.float32, np.float64)
DEVICES = ("cpu", "cuda")
#: the module whose ``forward(model, X)`` runs ``model(X)``, by device (imported on first use)
FORWARD = {"cpu": "symnet.backends.eager", "cuda": "symnet.backends.cuda"}


def manual_seed(seed: int) -> None:
    """Seed parameter initialisation (and everything else symnet draws at random).

    Example:
        >>> import symnet as sn
        >>> sn.manual_seed(0); a = sn.Linear(2, 2).weight.data.copy()
        >>> sn.manual_seed(0); bool((a == sn.Linear(2, 2).weight.data).all())
        True
    """
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The generator `manual_seed` set."""
    return _rng


def check_dtype(dtype) -> type:
    """Return numpy's float32 or float64 type for ``dtype``, or raise a clear TypeError."""
    try:
        resolved = np.dtype(dtype).type
    except TypeError:
        resolved = None
    if resolved not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def _device_text(value) -> str | None:
    """A device's name: a string, or the text of a ``torch.device``; None for anything else."""
    if isinstance(value, str):
        return value
    return str(value) if type(value).__name__ == "device" and hasattr(value, "type") else None


def is_device(value) -> bool:
    """Whether ``value`` names a device (``"cpu"``, ``"cuda:0"``…) rather than a dtype."""
    text = _device_text(value)
    return text is not None and text.split(":")[0] in DEVICES


def check_device(device) -> str:
    """``"cpu"`` or ``"cuda"`` for ``device`` (``"cuda:0"`` is ``"cuda"``), or a clear ValueError.

    Example:
        >>> check_device("cuda:0"), check_device("cpu")
        ('cuda', 'cpu')
    """
    text = _device_text(device)
    if text in DEVICES or text == "cuda:0":
        return text.split(":")[0]
    if is_device(device):
        raise ValueError(f"device {device!r}: symnet uses one GPU, Numba's current device: "
                         f"write 'cuda' (or 'cuda:0'; pick the GPU with CUDA_VISIBLE_DEVICES)")
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


class Parameter:
    """A learnable array and its accumulated gradient (``None`` until a backward pass).

    On the GPU (after ``module.to("cuda")``) the parameter owns a device copy of its values
    (a `symnet.backends.cuda.Mirror`, which also knows the device copies of the optimizer state a
    CUDA step keeps beside them, so moving the parameter home brings those home too).  The
    step trains the copies in place: between steps nothing crosses the bus.
    ``data`` is still the host numpy array: reading it first copies the
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
        self._mirror = None  # a symnet.backends.cuda.Mirror of _host while on the GPU
        self._owner: tuple | None = None  # (module, name) once a module registers it
        self.grad: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        """The values as a host array (current: copied back from the GPU if newer there)."""
        if self._mirror is not None:
            self._mirror.host(write=True)
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
        if fetch and self._mirror is not None:
            self._mirror.host(write=write)
        a = self._host
        if a.shape != self._shape or a.dtype != self._dtype or not a.flags.c_contiguous:
            raise ValueError(f"{self._label}: its array was changed in place to shape {a.shape}"
                             f", dtype {a.dtype}{'' if a.flags.c_contiguous else ', strided'}; "
                             f"expected C-contiguous {self._dtype} of shape {self._shape} "
                             f"(assign new values with p.data = …)")
        return a

    def _replace(self, value: np.ndarray) -> None:
        """Hold ``value`` (already checked or converted) from now on, on every device."""
        if self._mirror is not None:  # a new array: a new copy on the GPU
            self._mirror = self._mirror.replaced(value)
        self._host = value
        self._shape, self._dtype = value.shape, value.dtype

    def _retype(self, dtype) -> None:
        """Convert to ``dtype`` (`Module.to`), keeping the shape; the gradient follows."""
        self._replace(np.ascontiguousarray(self.data, dtype=dtype))
        self.grad = None if self.grad is None else self.grad.astype(dtype)

    def _read(self) -> np.ndarray:
        """The current values for reading only (the GPU copy stays valid)."""
        return self._host if self._mirror is None else self._mirror.host(write=False)

    def _assign(self, values: np.ndarray) -> None:
        """Overwrite the values in place, on the host and (at once) on the GPU."""
        if self._mirror is None:
            self._host[...] = values
        else:
            self._mirror.assign(values)

    def _move(self, device: str) -> None:
        """Give the values a GPU copy (``"cuda"``) or bring them home and drop it (``"cpu"``)."""
        if device == "cuda" and self._mirror is None:
            from symnet.backends.cuda import Mirror

            self._mirror = Mirror(self._host)
        elif device == "cpu" and self._mirror is not None:
            self._mirror.release()
            self._mirror = None

    @property
    def device(self) -> str:
        """``"cpu"``, or ``"cuda"`` while the values live on the GPU."""
        return "cpu" if self._mirror is None else "cuda"

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

    def __array__(self, dtype=None, copy=None):
        values = self._read()
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        where = "" if self._mirror is None else ", device='cuda'"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{where})"


class Module:
    """Base class: parameters, children, train/eval mode, state dicts, dtype."""

    def __init__(self):
        self._parameters: OrderedDict[str, Parameter] = OrderedDict()
        self._modules: OrderedDict[str, Module] = OrderedDict()
        self.training = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- structure -----------------------------------------------------------------------
    def children(self) -> Iterator[Module]:
        return iter(self.__dict__.get("_modules", {}).values())

    def register_parameter(self, name: str, parameter: Parameter | None) -> None:
        """Add ``parameter`` under ``name`` (as PyTorch's); it is then named in its errors.

        Example:
            >>> import numpy as np, symnet as sn
            >>> m = sn.Module(); m.register_parameter("scale", sn.Parameter(np.ones(3)))
            >>> [name for name, _ in m.named_parameters()]
            ['scale']
        """
        if parameter is not None and not isinstance(parameter, Parameter):
            raise TypeError(f"{type(self).__name__}.register_parameter: {name!r} is "
                            f"{type(parameter).__name__}, not a symnet Parameter")
        if parameter is None:
            self._parameters.pop(name, None)
            return
        if parameter._owner is None:
            parameter._owner = (self, name)
        self._parameters[name] = parameter

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, parameter)`` pairs with PyTorch's dotted names.

        A parameter reached twice (a module used in two places) is yielded once, under its
        first name, unless ``remove_duplicate=False`` — as in PyTorch.

        Example:
            >>> import symnet as sn
            >>> shared = sn.Linear(2, 2)
            >>> [n for n, _ in sn.Sequential(shared, sn.Tanh(), shared).named_parameters()]
            ['0.weight', '0.bias']
        """
        seen: set[int] = set()
        for name, p in self._all_parameters(prefix):
            if remove_duplicate and id(p) in seen:
                continue
            seen.add(id(p))
            yield name, p

    def _all_parameters(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for name, p in self.__dict__.get("_parameters", {}).items():
            yield prefix + name, p
        for name, child in self.__dict__.get("_modules", {}).items():
            yield from child._all_parameters(prefix + name + ".")

    def parameters(self) -> list[Parameter]:
        """All parameters, in registration order (PyTorch's order)."""
        return [p for _, p in self.named_parameters()]

    def layers(self) -> list[Module]:
        """The leaf modules in the order data flows through them."""
        kids = list(self.children())
        if not kids:
            return [self]
        return [leaf for kid in kids for leaf in kid.layers()]

    # --- modes and gradients ---------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters as host numpy arrays (copies) under PyTorch's keys and shapes.

        A parameter used in several places appears under each of its names, as in PyTorch.
        On any device: a cuda model's values are copied back from the GPU, so a checkpoint
        loads into a CPU model, a cuda model or ``torch.nn.Sequential`` alike.

        Example:
            >>> import symnet as sn
            >>> list(sn.Sequential(sn.Linear(3, 2)).state_dict())
            ['0.weight', '0.bias']
        """
        return OrderedDict((name, np.array(p._read()))
                           for name, p in self.named_parameters(remove_duplicate=False))

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters; every problem is reported before anything changes.

        On a cuda model the GPU copies are overwritten too: the next step trains from them.

        Example:
            >>> import symnet as sn
            >>> m = sn.Sequential(sn.Linear(3, 2)); m.load_state_dict(m.state_dict())
        """
        own = dict(self.named_parameters(remove_duplicate=False))
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for key, p in own.items():
            if key in state and tuple(np.shape(state[key])) != p.shape:
                problems.append(
                    f"{key!r} has shape {tuple(np.shape(state[key]))}, expected {p.shape}"
                )
        converted = {}
        for key, p in own.items():
            if key in state:
                try:  # convert everything before writing anything
                    converted[key] = np.asarray(state[key], dtype=p.dtype)
                except (TypeError, ValueError) as e:
                    problems.append(f"{key!r} cannot be converted to {p.dtype}: {e}")
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__}: " + "; ".join(problems))
        for key, value in converted.items():
            own[key]._assign(value)

    @property
    def dtype(self) -> type:
        """The parameters' dtype (float32 without parameters); a TypeError naming the
        parameters of each dtype when they differ, since one kernel takes one dtype.

        Example:
            >>> import numpy as np, symnet as sn
            >>> m = sn.Sequential(sn.Linear(2, 2), sn.Linear(2, 2, dtype=np.float64))
            >>> m.dtype
            Traceback (most recent call last):
            ...
            TypeError: Sequential mixes dtypes (0.weight, 0.bias float32; 1.weight, 1.bias \
float64): convert the whole model with model.to(np.float32) or model.to(np.float64)
        """
        names: dict[str, list[str]] = {}  # dtype → its parameters
        for name, p in self.named_parameters():
            names.setdefault(p.dtype.name, []).append(name)
        if len(names) > 1:
            listed = "; ".join(f"{', '.join(keys)} {dtype}" for dtype, keys in names.items())
            raise TypeError(f"{type(self).__name__} mixes dtypes ({listed}): convert the whole "
                            f"model with model.to(np.float32) or model.to(np.float64)")
        return np.dtype(next(iter(names), "float32")).type

    @property
    def device(self) -> str:
        """Where the parameters live: ``"cpu"`` or ``"cuda"`` (``"cpu"`` without parameters).

        Example:
            >>> import symnet as sn
            >>> sn.Sequential(sn.Linear(2, 2)).device
            'cpu'
        """
        where: dict[str, str] = {}  # device → its first parameter
        for name, p in self.named_parameters():
            where.setdefault(p.device, name)
        if len(where) > 1:
            raise ValueError(f"{type(self).__name__}: parameters on several devices ("
                             + ", ".join(f"{name} on {d!r}" for d, name in sorted(where.items()))
                             + "): move the whole model with .to(device)")
        return next(iter(where), "cpu")

    def to(self, *args, device: str | None = None, dtype=None) -> Module:
        """Move to a device and/or convert to a dtype, in place; returns the module.

        As PyTorch's ``Module.to``: ``to("cuda")``, ``to("cpu")``, ``to(np.float64)``,
        ``to("cuda", np.float64)``, ``to(device=…, dtype=…)``.  ``"cuda"`` uploads every
        parameter once (and needs numba-cuda and a GPU, or Numba's simulator); ``"cpu"``
        copies the trained values — and the optimizer state a CUDA step kept on the GPU —
        back into the host arrays.  Compiled steps follow their model's parameters: a CUDA
        step whose model went to the CPU and back keeps training, but a step is bound to the
        device it was compiled for (compile again to train on the other one).

        Example:
            >>> import numpy as np, symnet as sn
            >>> m = sn.Sequential(sn.Linear(2, 2))
            >>> m.to(np.float64) is m, m.dtype.__name__, m.to("cpu").device
            (True, 'float64', 'cpu')
        """
        for arg in args:
            if is_device(arg):
                if device is not None:
                    raise TypeError(f"to: two devices given ({device!r} and {arg!r})")
                device = arg
            elif dtype is not None:
                raise TypeError(f"to: two dtypes given ({dtype!r} and {arg!r})")
            else:
                dtype = arg
        try:
            target = None if dtype is None else check_dtype(dtype)
        except TypeError:
            if isinstance(dtype, str):
                raise ValueError(f"to: {dtype!r} is neither a device ('cpu', 'cuda') nor a "
                                 f"dtype (float32, float64)") from None
            raise
        where = None if device is None else check_device(device)
        if where == "cuda":
            from symnet.backends.cuda import require

            require()  # the one clear error, before anything moves
        if where == "cpu":  # convert on the host, where the values then live
            self._move("cpu")
        if target is not None:
            for p in self.parameters():
                if p.dtype != target:
                    p._retype(target)
        if where == "cuda":
            self._move("cuda")
        return self

    def _move(self, device: str) -> None:
        for p in self.parameters():
            p._move(device)

    def cuda(self) -> Module:
        """``to("cuda")``."""
        return self.to("cuda")

    def cpu(self) -> Module:
        """``to("cpu")``.

        Example:
            >>> import symnet as sn
            >>> sn.Sequential(sn.Linear(2, 2)).cpu().device
            'cpu'
        """
        return self.to("cpu")

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for a batch-major (N, features) array, as a host numpy array.

        A cuda model runs the forward kernels on the GPU (`symnet.backends.cuda.forward`): only the
        batch goes in and the output comes back.
        """
        return importlib.import_module(FORWARD[self.device]).forward(self, inputs)


class Linear(Module):
    """``Z = W·X + b·1ᵀ``: weight (out_features, in_features), as PyTorch's Linear.

    Initialised uniform in ±1/√in_features, like PyTorch.

    Example:
        >>> import symnet as sn
        >>> sn.Linear(4, 8).weight.shape
        (8, 4)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32):
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Linear: {arg} must be a positive integer, got {value!r}")
        dtype = check_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / np.sqrt(self.in_features)
        weight = _rng.uniform(-bound, bound, (self.out_features, self.in_features))
        self.register_parameter("weight", Parameter(weight.astype(dtype)))
        if bias:
            b = _rng.uniform(-bound, bound, self.out_features)
            self.register_parameter("bias", Parameter(b.astype(dtype)))

    @property
    def weight(self) -> Parameter:
        return self._parameters["weight"]

    @property
    def bias(self) -> Parameter | None:
        return self._parameters.get("bias")

    def __repr__(self) -> str:
        extra = "" if self.bias is not None else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"


class Sequential(Module):
    """Modules applied in order; children are named '0', '1', … as in PyTorch.

    Example:
        >>> import symnet as sn
        >>> len(sn.Sequential(sn.Linear(2, 2), sn.Tanh()).layers())
        2
    """

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} is {type(m).__name__}, not a Module")
            self._modules[str(i)] = m

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({k}): {m!r}" for k, m in self._modules.items())
        return f"Sequential(\n{inner}\n)"
