"""Model + loss → the forward equations, named as in the seed (samples are columns).

``Z1 = W1·X + b1·1ᵀ``, ``A1 = f(Z1)``, …, ``Ŷ = softmax(Z2)``, ``L = −(1/N)·Σ Y ⊙ log(Ŷ)``.

Example:
    >>> import symnet as sn
    >>> g = build(sn.Sequential(sn.Linear(4, 8), sn.Tanh(), sn.Linear(8, 3)), sn.MSELoss())
    >>> [str(eq.lhs) for eq in g.forward]
    ['Z1', 'A1', 'Yhat', 'L']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import singledispatch

import sympy as sp

from codegen.expr import Elementwise, LogSoftmax, Softmax, Total
from symnet.nn import activations, losses
from symnet.nn.losses import Loss
from symnet.nn.module import Linear, Module

N = sp.Symbol("N", integer=True, positive=True)
LOSS = sp.Symbol("L")


def ew(fn, *operands: sp.MatrixExpr, label: str = "") -> Elementwise:
    """``Elementwise`` from a Python function of scalar entries: ``ew(lambda g, a: g*a, G, A)``."""
    variables = sp.symbols(f"_e0:{len(operands)}", real=True)
    return Elementwise(sp.Lambda(variables, fn(*variables)), *operands, label=label)


@dataclass
class Graph:
    """Forward equations plus what each symbol is.

    ``params`` maps a parameter's symbol name (``W1``) to its state-dict key (``0.weight``).
    """

    forward: list[sp.Eq]
    inputs: sp.MatrixSymbol
    target: sp.MatrixSymbol
    loss: Loss
    params: dict[str, str] = field(default_factory=dict)
    #: the model's output (what ``model(X)`` returns); later equations belong to the loss.
    output: str = ""

    def model_equations(self) -> list[sp.Eq]:
        """The forward equations of the model alone, up to its output."""
        names = [eq.lhs.name for eq in self.forward]
        return self.forward[: names.index(self.output) + 1]

    def symbol(self, name: str) -> sp.Basic:
        for eq in self.forward:
            if eq.lhs.name == name:
                return eq.lhs
        for s in self.leaves():
            if s.name == name:
                return s
        raise KeyError(name)

    def leaves(self) -> list[sp.MatrixSymbol]:
        defined = {eq.lhs for eq in self.forward}
        found: dict[str, sp.MatrixSymbol] = {}
        for eq in self.forward:
            for s in eq.rhs.atoms(sp.MatrixSymbol):
                if s not in defined:
                    found.setdefault(s.name, s)
        return list(found.values())


class _Builder:
    def __init__(self, features: int):
        self.current: sp.MatrixExpr = sp.MatrixSymbol("X", features, N)
        self.layer = 0
        self.used: set[str] = set()
        self.forward: list[sp.Eq] = []
        self.params: dict[str, str] = {}
        self.symbols: dict[int, sp.MatrixSymbol] = {}  # id(Parameter) → its symbol

    def parameter(self, parameter, name: str, shape: tuple, key: str) -> sp.MatrixSymbol:
        """The symbol of ``parameter``: new at its first use, the same one at every later use
        (a module used twice shares its parameters; their gradients then add up)."""
        if id(parameter) not in self.symbols:
            self.symbols[id(parameter)] = sp.MatrixSymbol(name, *shape)
            self.params[name] = key
        return self.symbols[id(parameter)]

    def name(self, base: str) -> str:
        name, k = base, 2
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def emit(self, base: str, rhs: sp.MatrixExpr) -> None:
        lhs = sp.MatrixSymbol(self.name(base), *rhs.shape)
        self.forward.append(sp.Eq(lhs, rhs, evaluate=False))
        self.current = lhs


@singledispatch
def _contribute(module: Module, b: _Builder, key: str) -> None:
    raise TypeError(f"{type(module).__name__} has no symbolic form; use Linear or an activation")


@_contribute.register
def _(module: Linear, b: _Builder, key: str) -> None:
    rows = b.current.shape[0]
    if rows != module.in_features:
        raise ValueError(f"{module!r} (layer {key}) receives {rows} features from the layer "
                         f"before it, expected {module.in_features}")
    b.layer += 1
    l = b.layer  # noqa: E741 - the seed's layer index
    W = b.parameter(module.weight, f"W{l}", (module.out_features, module.in_features),
                    f"{key}.weight")
    rhs = W * b.current
    if module.bias is not None:
        bias = b.parameter(module.bias, f"b{l}", (module.out_features, 1), f"{key}.bias")
        rhs = rhs + bias * sp.OneMatrix(1, N)
    b.emit(f"Z{l}", rhs)


@_contribute.register
def _(module: activations.Activation, b: _Builder, key: str) -> None:
    b.emit(f"A{b.layer}", ew(lambda v: module.expr.xreplace({module.var: v}), b.current,
                             label=module.label))


@_contribute.register
def _(module: activations.Softmax, b: _Builder, key: str) -> None:
    b.emit(f"A{b.layer}", Softmax(b.current))


@_contribute.register
def _(module: activations.LogSoftmax, b: _Builder, key: str) -> None:
    b.emit(f"A{b.layer}", LogSoftmax(b.current))


def first_linear(model: Module) -> tuple[str, Linear]:
    """``(prefix, layer)`` of the model's first Linear, which fixes the input width."""
    found = next(((k, m) for k, m in model.named_layers() if isinstance(m, Linear)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Linear layer, so its input width "
                         "is unknown")
    return found


def build(model: Module, loss: Loss) -> Graph:
    """The forward equations of ``model`` followed by those of ``loss``."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a symnet Module, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a symnet loss, got {type(loss).__name__}")
    b = _Builder(first_linear(model)[1].in_features)
    inputs = b.current
    for key, module in model.named_layers():
        _contribute(module, b, key)
    if not b.forward:
        raise ValueError("the model has no layers")
    output = _add_loss(b, loss)
    return Graph(b.forward, inputs, _target(b), loss, b.params, output)


def _target(b: _Builder) -> sp.MatrixSymbol:
    return next(s for eq in b.forward for s in eq.rhs.atoms(sp.MatrixSymbol) if s.name == "Y")


def _add_loss(b: _Builder, loss: Loss) -> str:
    """Append the loss's equations; returns the name of the model's output."""
    out = b.current
    classes = out.shape[0]
    if loss.target_kind == "index" and classes < 2:
        raise ValueError(f"{loss!r} needs at least 2 classes, the model outputs {classes}")
    Y = sp.MatrixSymbol("Y", classes, N)
    if loss.link is None:
        # The model's output is the prediction: rename its equation's left side to Ŷ.
        last = b.forward.pop()
        b.used.discard(last.lhs.name)
        b.emit("Yhat", last.rhs)
        out = pred = b.current
    elif loss.link == "softmax":
        b.emit("Yhat", Softmax(out))
        pred = b.current
    else:
        b.emit("Yhat", ew(lambda v: 1 / (1 + sp.exp(-v)), out, label="σ"))
        pred = out
    scale = sp.Integer(1)
    if loss.reduction == "mean":
        scale = 1 / N if loss.mean_over_samples_only else 1 / (classes * N)
    body = ew(lambda v, t: loss.expr.xreplace({losses.p: v, losses.y: t}), pred, Y,
              label=loss.label)
    b.forward.append(sp.Eq(LOSS, scale * Total(body), evaluate=False))
    return out.name
