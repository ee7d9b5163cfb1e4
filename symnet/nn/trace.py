"""Tracing: a model's ``forward`` run once on symbolic values, recording named equations.

A `Trace` is the notebook a forward pass writes in: each operation on a `symnet.nn.value.Value`
appends ``name = formula`` (a ``sympy.Eq``) and hands back a value standing for ``name``.
Parameters get one symbol each, at their first use (a module used twice shares them).
Dropout masks are per-call inputs, recorded with their drop probability.

Example:
    >>> import symnet as sn
    >>> t = trace(sn.Sequential(sn.Linear(3, 2), sn.Tanh()))
    >>> [f"{eq.lhs} = {eq.rhs.func.__name__}" for eq in t.forward]
    ['Z1 = MatAdd', 'A1 = Elementwise']
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

N = sp.Symbol("N", integer=True, positive=True)
#: names the equations, the kernels or the optimizers already use for something else
RESERVED = frozenset({"X", "Y", "N", "L", "labels", "i", "j", "lr", "eps", "beta1",
                      "beta2", "momentum", "dampening", "weight_decay", "t", "math", "np"})


@dataclass(frozen=True)
class Mask:
    """A dropout mask: a per-call input of 0/1 entries, 1 kept with probability ``1 − p``."""

    name: str
    p: float
    shape: tuple
    module: object = field(default=None, compare=False, hash=False, repr=False)

    def draw(self, rng: np.random.Generator, batch: int, dtype) -> np.ndarray:
        """A mask for ``batch`` samples in storage layout (batch-major): 1 kept, 0 dropped."""
        return (rng.random((batch, self.shape[0])) >= self.p).astype(dtype)


class Trace:
    """The equations of one forward pass, in order, and what each symbol is."""

    def __init__(self, model, features: int):
        self.forward: list[sp.Eq] = []
        self.params: dict[str, str] = {}  # symbol name → state-dict key
        self.masks: list[Mask] = []
        self.buffers: dict[str, str] = {}  # buffer symbol name → state-dict key
        #: in-place updates of buffers (running statistics), ``buffer ← formula``
        self.updates: list[sp.Eq] = []
        #: modules whose ``num_batches_tracked`` counts each training call
        self.counted: list = []
        self.min_batch = 1
        self.layer = 0  # the seed's layer index: the number of Linear layers so far
        self.used: set[str] = set(RESERVED)
        self._symbols: dict[int, sp.MatrixSymbol] = {}  # id(Parameter) → its symbol
        self._keys = {id(p): k for k, p in model.named_parameters()}
        self._buffer_keys = {(id(m), name): (f"{k}.{name}" if k else name)
                             for k, m in model.named_modules() for name in m._buffers}
        self._where = {id(m): k for k, m in model.named_modules()}
        self.path: list[str] = []  # the modules being traced, outermost first
        self.inputs = sp.MatrixSymbol("X", features, N)

    # --- names -----------------------------------------------------------------------------
    def name(self, base: str, numbered: bool = False) -> str:
        """``base`` (or ``base1``, ``base2``… when ``numbered``), made unique with ``_2``…"""
        if numbered:
            k = 1
            while f"{base}{k}" in self.used:
                k += 1
            base = f"{base}{k}"
        name, k = base, 2
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def emit(self, base: str, rhs: sp.MatrixExpr, numbered: bool = False) -> sp.MatrixSymbol:
        """Append ``base = rhs``; the new symbol."""
        lhs = sp.MatrixSymbol(self.name(base, numbered), *rhs.shape)
        self.forward.append(sp.Eq(lhs, rhs, evaluate=False))
        return lhs

    def rename(self, old: sp.MatrixSymbol, base: str) -> sp.MatrixSymbol:
        """Give ``old`` the name ``base`` in every equation (the model's output becomes Ŷ)."""
        self.used.discard(old.name)
        new = sp.MatrixSymbol(self.name(base), *old.shape)
        self.forward = [sp.Eq(eq.lhs.xreplace({old: new}), eq.rhs.xreplace({old: new}),
                              evaluate=False) for eq in self.forward]
        return new

    # --- leaves ----------------------------------------------------------------------------
    def parameter(self, parameter, base: str, numbered: bool = False) -> sp.MatrixSymbol:
        """The symbol of ``parameter``: new at its first use, the same one at every later
        use.  A vector parameter is a column: ``(d,)`` is ``d × 1``."""
        if id(parameter) not in self._symbols:
            key = self._keys.get(id(parameter))
            if key is None:
                raise ValueError(f"{self.where()}: uses a Parameter that is not registered in "
                                 "the model (assign it to an attribute of a Module: "
                                 "self.w = sn.Parameter(...))")
            shape = parameter.shape if len(parameter.shape) == 2 else (*parameter.shape, 1)
            if len(shape) != 2:
                raise ValueError(f"{key}: a parameter of shape {parameter.shape} cannot be used "
                                 "in a formula; parameters are vectors or matrices")
            name = self.name(base, numbered)
            self._symbols[id(parameter)] = sp.MatrixSymbol(name, *shape)
            self.params[name] = key
        return self._symbols[id(parameter)]

    def buffer(self, module, name: str, base: str) -> sp.MatrixSymbol:
        """The symbol of ``module``'s buffer ``name`` (a column, as a vector parameter)."""
        key = self._buffer_keys.get((id(module), name))
        if key is None:
            raise ValueError(f"{self.where()}: buffer {name!r} is not registered in the model")
        for symbol, known in self.buffers.items():
            if known == key:
                return sp.MatrixSymbol(symbol, module._buffers[name].size, 1)
        symbol = self.name(base, numbered=True)
        self.buffers[symbol] = key
        return sp.MatrixSymbol(symbol, module._buffers[name].size, 1)

    def update(self, buffer: sp.MatrixSymbol, rhs: sp.MatrixExpr) -> None:
        """``buffer ← rhs``, run after the forward pass (and, in a train step, after the
        finite check: a refused step leaves the buffer as it was)."""
        self.updates.append(sp.Eq(buffer, rhs, evaluate=False))

    def mask(self, module, p: float, shape: tuple) -> sp.MatrixSymbol:
        """A new dropout mask of ``module``: a leaf the caller draws for every call."""
        name = self.name("M", numbered=True)
        self.masks.append(Mask(name, p, shape, module))
        return sp.MatrixSymbol(name, *shape)

    # --- where we are, for errors ----------------------------------------------------------
    @contextlib.contextmanager
    def inside(self, module):
        self.path.append(self._where.get(id(module), "") or type(module).__name__)
        try:
            yield
        finally:
            self.path.pop()

    def where(self) -> str:
        """``layer 1.fc1 (Linear(32, 64))``-style context for an error message."""
        return f"layer {self.path[-1]}" if self.path else "the model"


def trace(model, features: int | None = None) -> Trace:
    """Run ``model.forward`` on a symbolic batch ``X`` (features × N) and record it.

    The returned trace's ``output`` is the symbol the model returns.
    """
    from symnet.nn.value import Value  # noqa: PLC0415 - value builds on this module

    width = input_width(model) if features is None else features
    t = Trace(model, width)
    out = model(Value(t.inputs, t))
    if not isinstance(out, Value) or out.trace is not t:
        raise TypeError(f"{type(model).__name__}.forward returned {type(out).__name__}; it "
                        "must return the symbolic value computed from its input")
    if out.expr.shape[1] != N:
        raise ValueError(f"{type(model).__name__}.forward returned a value of shape "
                         f"{_shape(out.expr)}: a model returns one column per sample")
    if not isinstance(out.expr, sp.MatrixSymbol) or out.expr == t.inputs or \
            out.expr.name in t.params:
        out = Value(t.emit("H", out.expr, numbered=True), t)
    t.output = out.expr
    return t


def input_layer(model) -> tuple[str, object]:
    """``(key, module)`` of the first module (in registration order, the model itself
    first) that declares ``in_features``: what fixes the input width."""
    for key, module in model.named_modules():
        width = getattr(module, "in_features", None)
        if isinstance(width, (int, np.integer)) and not isinstance(width, bool):
            return key, module
    raise ValueError(f"{type(model).__name__}: its input width is unknown: it has no Linear "
                     "or other layer with in_features (give the model an in_features "
                     "attribute)")


def input_width(model) -> int:
    """The number of input features (`input_layer`'s ``in_features``)."""
    return int(input_layer(model)[1].in_features)


def _shape(m: sp.MatrixExpr) -> str:
    return f"({m.shape[0]}, {m.shape[1]})"
