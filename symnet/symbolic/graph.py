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

import sympy as sp

from codegen.expr import Elementwise, Softmax, Total
from symnet.nn import losses
from symnet.nn.losses import Loss
from symnet.nn.module import Module
from symnet.nn.trace import Mask, N, Trace, trace

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
    #: dropout masks: per-call inputs, drawn by whoever runs the equations
    masks: list[Mask] = field(default_factory=list)
    #: buffers (running statistics): symbol name → state-dict key
    buffers: dict[str, str] = field(default_factory=dict)
    #: the buffers' in-place updates, ``buffer ← formula`` (after the forward pass)
    updates: list[sp.Eq] = field(default_factory=list)

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


def build(model: Module, loss: Loss) -> Graph:
    """The forward equations of ``model`` (its ``forward`` traced) followed by ``loss``'s."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a symnet Module, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a symnet loss, got {type(loss).__name__}")
    t = trace(model)
    if not t.forward:
        raise ValueError("the model has no layers")
    output = _add_loss(t, loss)
    return Graph(t.forward, t.inputs, _target(t), loss, t.params, output, t.masks, t.buffers,
                 t.updates)


def _target(t: Trace) -> sp.MatrixSymbol:
    return next(s for eq in t.forward for s in eq.rhs.atoms(sp.MatrixSymbol) if s.name == "Y")


def _add_loss(t: Trace, loss: Loss) -> str:
    """Append the loss's equations; returns the name of the model's output."""
    out = t.output
    classes = out.shape[0]
    if loss.target_kind == "index" and classes < 2:
        raise ValueError(f"{loss!r} needs at least 2 classes, the model outputs {classes}")
    Y = sp.MatrixSymbol("Y", classes, N)
    if loss.link is None:
        # The model's output is the prediction: it is named Ŷ.
        out = pred = t.rename(out, "Yhat")
    elif loss.link == "softmax":
        pred = t.emit("Yhat", Softmax(out))
    else:
        t.emit("Yhat", ew(lambda v: 1 / (1 + sp.exp(-v)), out, label="σ"))
        pred = out
    scale = sp.Integer(1)
    if loss.reduction == "mean":
        scale = 1 / N if loss.mean_over_samples_only else 1 / (classes * N)
    body = ew(lambda v, t: loss.expr.xreplace({losses.p: v, losses.y: t}), pred, Y,
              label=loss.label)
    t.forward.append(sp.Eq(LOSS, scale * Total(body), evaluate=False))
    return out.name
