"""Modules own parameters (numpy arrays) and say which operation they contribute.

Nothing is computed at declaration: `symnet.symbolic.graph` turns a model into equations,
and the compiled kernels run them.

Devices: ``model.to("cuda")`` gives every parameter a copy on the GPU (a `Storage` the CUDA
backend makes, found by name in `symnet.nn.devices`) which the compiled CUDA step trains in
place; ``Parameter.data`` and ``state_dict()`` always hand out host numpy arrays, copied back
from the GPU when the device values are newer.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from symnet.nn.devices import backend, check_device, is_device
from symnet.nn.parameter import Parameter, check_dtype

_rng = np.random.default_rng()


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

    def named_layers(self, prefix: str = "") -> list[tuple[str, Module]]:
        """The leaf modules in the order data flows through them, with their state-dict
        prefixes ('0', '1.2', …); a module used twice appears at each of its places.

        Example:
            >>> import symnet as sn
            >>> model = sn.Sequential(sn.Linear(2, 2), sn.Sequential(sn.Tanh()))
            >>> [k for k, _ in model.named_layers()]
            ['0', '1.0']
        """
        kids = list(self.__dict__.get("_modules", {}).items())
        if not kids:
            return [(prefix, self)]
        return [leaf for name, kid in kids
                for leaf in kid.named_layers(f"{prefix}.{name}" if prefix else name)]

    def layers(self) -> list[Module]:
        """The leaf modules in the order data flows through them."""
        return [m for _, m in self.named_layers()]

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
        if where is not None and where != "cpu":
            backend(where).require()  # the one clear error, before anything moves
        if where == "cpu":  # convert on the host, where the values then live
            self._move("cpu")
        if target is not None:
            for p in self.parameters():
                if p.dtype != target:
                    p._retype(target)
        if where is not None and where != "cpu":
            self._move(where)
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
        return backend(self.device).forward(self, inputs)


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
