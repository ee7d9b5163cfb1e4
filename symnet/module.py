"""Modules own parameters (numpy arrays) and say which operation they contribute.

Nothing is computed at declaration: `symnet.graph` turns a model into equations, and the
compiled kernels run them.

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

_rng = np.random.default_rng()
DTYPES = (np.float32, np.float64)


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


class Parameter:
    """A learnable array and its accumulated gradient (``None`` until a backward pass).

    Example:
        >>> import numpy as np, symnet as sn
        >>> sn.Parameter(np.zeros((2, 3), np.float32)).shape
        (2, 3)
    """

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data)
        self.grad: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


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

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, parameter)`` pairs with PyTorch's dotted names."""
        for name, p in self.__dict__.get("_parameters", {}).items():
            yield prefix + name, p
        for name, child in self.__dict__.get("_modules", {}).items():
            yield from child.named_parameters(prefix + name + ".")

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
        """Parameters as host numpy arrays under PyTorch's keys and shapes.

        Example:
            >>> import symnet as sn
            >>> list(sn.Sequential(sn.Linear(3, 2)).state_dict())
            ['0.weight', '0.bias']
        """
        return OrderedDict((name, np.array(p.data)) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters; every problem is reported before anything changes.

        Example:
            >>> import symnet as sn
            >>> m = sn.Sequential(sn.Linear(3, 2)); m.load_state_dict(m.state_dict())
        """
        own = dict(self.named_parameters())
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
            own[key].data[...] = value

    @property
    def dtype(self) -> type:
        params = self.parameters()
        return params[0].data.dtype.type if params else np.float32

    def to(self, dtype) -> Module:
        """Convert every parameter to ``dtype`` (float32 or float64); returns the module."""
        target = check_dtype(dtype)
        for p in self.parameters():
            if p.data.dtype != target:
                p.data = p.data.astype(target)
                p.grad = None if p.grad is None else p.grad.astype(target)
        return self

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        from symnet.runtime import forward

        return forward(self, inputs)


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
        self._parameters["weight"] = Parameter(weight.astype(dtype))
        if bias:
            b = _rng.uniform(-bound, bound, self.out_features)
            self._parameters["bias"] = Parameter(b.astype(dtype))

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
