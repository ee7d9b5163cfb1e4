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
import sympy as sp

from symnet.nn.devices import backend, check_device, is_device
from symnet.nn.parameter import Parameter, check_dtype
from symnet.nn.value import Value

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


def _load_buffers(buffers: dict, state: dict, strict: bool, check_only: bool) -> list[str]:
    """Check (or copy in place: kernels hold the arrays) the buffers' entries of ``state``."""
    problems = []
    for key, (module, name) in buffers.items():
        current = module._buffers[name]
        if key not in state:
            if strict:
                problems.append(f"missing keys [{key!r}]")
            continue
        value = np.asarray(state[key])
        if value.shape != current.shape:
            problems.append(f"{key!r} has shape {value.shape}, expected {current.shape}")
        elif not check_only:
            current[...] = value.astype(current.dtype)
    return problems


def generator() -> np.random.Generator:
    """symnet's random generator (initialisation, dropout masks), seeded by `manual_seed`."""
    return _rng


class Module:
    """Base class: parameters, children, train/eval mode, state dicts, dtype.

    As in PyTorch, a subclass assigns its parameters and submodules as attributes (they
    register under those names) and composes them in ``forward``.  ``forward`` is run once
    on symbolic values (`symnet.nn.value.Value`: ``@``, ``+ - * / **``, ``sn.relu``,
    ``sn.elementwise``…) to record its equations; the model then runs on arrays through
    compiled kernels.

    Example:
        >>> import symnet as sn
        >>> class Residual(sn.Module):
        ...     def __init__(self, d):
        ...         super().__init__()
        ...         self.fc = sn.Linear(d, d)
        ...     def forward(self, x):
        ...         return x + sn.tanh(self.fc(x))
        >>> [name for name, _ in Residual(4).named_parameters()]
        ['fc.weight', 'fc.bias']
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.training = True

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, (Parameter, Module)) and "_modules" not in self.__dict__:
            raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before "
                                 f"Module.__init__() call (call super().__init__() first)")
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self._modules.pop(name, None)
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._parameters.pop(name, None)
            self._modules[name] = value
        elif name in self.__dict__.get("_buffers", {}):
            self._buffers[name] = np.asarray(value)
        else:
            if "_modules" in self.__dict__:
                if name in self._parameters and value is None:
                    self._parameters.pop(name)
                    return
                self._parameters.pop(name, None)
                self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only called when ordinary lookup fails: registered parameters and submodules.
        for table in ("_parameters", "_buffers", "_modules"):
            found = self.__dict__.get(table, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in ("_parameters", "_modules"):
            if name in self.__dict__.get(table, {}):
                del self.__dict__[table][name]
                return
        object.__delattr__(self, name)

    def __repr__(self) -> str:
        return self._tree(repr, ",\n")

    def __str__(self) -> str:
        """PyTorch's ``print(model)``: ``Linear(in_features=4, out_features=8, bias=True)``."""
        return self._tree(str, "\n")

    def _tree(self, show, separator: str) -> str:
        kids = self.__dict__.get("_modules", {})
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = separator.join(f"  ({k}): " + show(m).replace("\n", "\n  ")
                               for k, m in kids.items())
        return f"{type(self).__name__}(\n{inner}\n)"

    def extra_repr(self) -> str:
        """The arguments shown inside ``Name(…)`` (PyTorch's hook for ``print(model)``)."""
        return ""

    def forward(self, x: Value) -> Value:
        """What the module computes, written on symbolic values; subclasses define it."""
        raise TypeError(f"{type(self).__name__} has no symbolic form ({x.trace.where()}): "
                        "define forward(self, x) on symbolic values")

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

    def register_buffer(self, name: str, tensor: np.ndarray, persistent: bool = True) -> None:
        """Add a state array that is not learned (BatchNorm's running statistics), as
        PyTorch's: in ``state_dict`` (when ``persistent``), converted by ``to(dtype)`` when
        it is floating point, and read or updated by the kernels in place.

        Example:
            >>> import numpy as np, symnet as sn
            >>> m = sn.Module(); m.register_buffer("count", np.zeros((), np.int64))
            >>> list(m.state_dict())
            ['count']
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"register_buffer: {name!r} is not a valid attribute name")
        self._buffers[name] = np.array(tensor, order="C")  # a 0-d count stays 0-d
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` for every buffer, with PyTorch's dotted names."""
        for module_prefix, module in self.named_modules(prefix):
            for name, array in module.__dict__.get("_buffers", {}).items():
                yield (f"{module_prefix}.{name}" if module_prefix else name), array

    def buffers(self) -> list[np.ndarray]:
        return [b for _, b in self.named_buffers()]

    def _state_items(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        """PyTorch's state_dict order: a module's parameters, its persistent buffers, then
        its children's, depth first (every use of a shared parameter, as torch has it)."""
        for name, p in self.__dict__.get("_parameters", {}).items():
            yield prefix + name, p
        skip = self.__dict__.get("_non_persistent", set())
        for name in self.__dict__.get("_buffers", {}):
            if name not in skip:
                yield prefix + name, (self, name)
        for name, child in self.__dict__.get("_modules", {}).items():
            yield from child._state_items(prefix + name + ".")

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

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for this module and every submodule, each once, as PyTorch's.

        Example:
            >>> import symnet as sn
            >>> [k for k, _ in sn.Sequential(sn.Linear(2, 2)).named_modules()]
            ['', '0']
        """
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop(0)
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            kids = module.__dict__.get("_modules", {}).items()
            stack[:0] = [(f"{name}.{k}" if name else k, m) for k, m in kids]

    def modules(self) -> Iterator[Module]:
        """This module and every submodule."""
        return (m for _, m in self.named_modules())

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
        return OrderedDict((name, np.array(item._read()) if isinstance(item, Parameter) else
                            np.array(item[0]._buffers[item[1]]))
                           for name, item in self._state_items())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters; every problem is reported before anything changes.

        On a cuda model the GPU copies are overwritten too: the next step trains from them.

        Example:
            >>> import symnet as sn
            >>> m = sn.Sequential(sn.Linear(3, 2)); m.load_state_dict(m.state_dict())
        """
        items = dict(self._state_items())
        own = {k: v for k, v in items.items() if isinstance(v, Parameter)}
        buffers = {k: v for k, v in items.items() if not isinstance(v, Parameter)}
        problems = _load_buffers(buffers, state, strict, check_only=True)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own and k not in buffers]
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
        _load_buffers(buffers, state, strict, check_only=False)

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
            for module in self.modules():  # floating-point buffers follow, as in PyTorch
                for name, b in module._buffers.items():
                    if b.dtype.kind == "f" and b.dtype != target:
                        module._buffers[name] = b.astype(target)
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

    def __call__(self, inputs):
        """The model's output for a batch-major (N, features) array, as a host numpy array;
        on a symbolic value (inside a traced ``forward``), ``forward``'s symbolic result.

        A cuda model runs the forward kernels on the GPU (`symnet.backends.cuda.forward`): only the
        batch goes in and the output comes back.
        """
        if isinstance(inputs, Value):
            with inputs.trace.inside(self):
                return self.forward(inputs)
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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def __repr__(self) -> str:
        extra = "" if self.bias is not None else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"

    def __str__(self) -> str:
        return f"Linear({self.extra_repr()})"

    def forward(self, x: Value) -> Value:
        """``Z{l} = W{l}·X + b{l}·1ᵀ``, numbered as the seed numbers layers."""
        t = x.trace
        rows = x.shape[0]
        if rows != self.in_features:
            raise ValueError(f"{self!r} ({t.where()}) receives {rows} features from the "
                             f"layer before it, expected {self.in_features}")
        t.layer += 1
        l = t.layer  # noqa: E741 - the seed's layer index
        W = t.parameter(self.weight, f"W{l}")
        rhs = sp.MatMul(W, x._plain(), evaluate=False)
        if self.bias is not None:
            b = t.parameter(self.bias, f"b{l}")
            rhs = sp.MatAdd(rhs, sp.MatMul(b, sp.OneMatrix(1, x.shape[1])), evaluate=False)
        return Value(t.emit(f"Z{l}", rhs), t)


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

    def forward(self, x: Value) -> Value:
        for module in self._modules.values():
            x = module(x)
        return x


class Identity(Module):
    """Returns its input unchanged (PyTorch's ``nn.Identity``).

    Example:
        >>> import symnet as sn
        >>> sn.Identity()
        Identity()
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: Value) -> Value:
        return x
