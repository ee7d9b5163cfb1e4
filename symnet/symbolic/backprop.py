"""The reverse sweep: forward equations → named backward equations (+ optimizer updates).

Each forward equation ``V = rhs`` contributes, through its rule in `symnet.symbolic.rules`, to the
gradients of its inputs; every gradient is a named symbol (``dZ2``, ``dA1``), so nothing is
differentiated twice and the result reads as the textbook's backprop.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.Sigmoid(), sn.Linear(8, 3))
    >>> d = sn.derive(model, sn.CrossEntropyLoss(reduction="sum"))
    >>> [str(eq.lhs) for eq in d.backward]
    ['dZ2', 'dW2', 'db2', 'dA1', 'dZ1', 'dW1', 'db1']
    >>> str(d.backward[1].rhs)
    'dZ2*A1.T'
"""

from __future__ import annotations

import sympy as sp

from codegen.expr import Elementwise
from symnet.nn.losses import Loss
from symnet.nn.module import Module
from symnet.symbolic.derivation import Derivation
from symnet.symbolic.fuse import fuse
from symnet.symbolic.graph import LOSS, Graph, build
from symnet.symbolic.rules import loss_gradient, vjp


def gradient_symbol(symbol: sp.MatrixSymbol) -> sp.MatrixSymbol:
    """``dZ1`` for ``Z1``: same shape, name prefixed with d."""
    return sp.MatrixSymbol("d" + symbol.name, *symbol.shape)


def backward(graph: Graph) -> list[sp.Eq]:
    """The backward equations of ``graph``, in the order a sweep computes them."""
    forward = graph.forward
    # A parameter's gradient is emitted once its last use (first in the forward order) has
    # contributed: a parameter used in several places gets the sum, in forward order.
    uses = {s: sum(s in eq.rhs.atoms(sp.MatrixSymbol) for eq in forward)
            for s in graph.leaves() if s.name in graph.params}
    # Only what a parameter flows into needs a gradient: none for the input X, nor for what
    # is made of X alone (input dropout's D1 = X ⊙ M1 would cost a Wᵀ·dZ product a step).
    flows = {s.name for s in uses}
    for eq in forward:
        if any(s.name in flows for s in eq.rhs.atoms(sp.MatrixSymbol)):
            flows.add(eq.lhs.name)
    contributions: dict[sp.MatrixSymbol, list[sp.MatrixExpr]] = {}
    eqs: list[sp.Eq] = []
    prediction = next((eq for eq in forward if eq.lhs.name == "Yhat"), None)

    def collect(target: sp.Basic, contribution: sp.MatrixExpr) -> None:
        if target.name not in flows:
            return  # the input X, the target Y and what only they make: no gradient wanted
        parts = contributions.setdefault(target, [])
        parts.insert(0, contribution)  # the sweep runs backwards: keep the forward order
        if len(parts) == uses.get(target):
            del contributions[target]
            eqs.append(sp.Eq(gradient_symbol(target), _sum(parts), evaluate=False))

    for eq in reversed(forward):
        if eq.lhs == LOSS:
            on_logits = prediction is not None and graph.loss.on_logits
            target, grad = loss_gradient(eq.rhs, prediction if on_logits else None)
            collect(target, grad)
            continue
        if eq.lhs not in contributions:
            continue  # Ŷ of a loss on logits: displayed, not on the gradient's path
        G = gradient_symbol(eq.lhs)
        eqs.append(sp.Eq(G, _sum(contributions.pop(eq.lhs)), evaluate=False))
        for target, contribution in vjp(eq, G).items():
            collect(target, contribution)
    one_hot = {"Y"} if graph.loss.target_kind == "index" else set()
    return fuse(eqs, one_hot)


def _sum(parts: list[sp.MatrixExpr]) -> sp.MatrixExpr:
    return parts[0] if len(parts) == 1 else sp.MatAdd(*parts, evaluate=False)


def derive(model: Module, loss: Loss, optimizer=None) -> Derivation:
    """Derive the backward pass (and ``optimizer``'s updates) of ``model`` under ``loss``.

    Example:
        >>> import symnet as sn
        >>> d = sn.derive(sn.Sequential(sn.Linear(2, 2)), sn.MSELoss())
        >>> str(d.backward[1].rhs)
        'dYhat*X.T'
    """
    graph = build(model, loss)
    eqs = backward(graph)
    updates = []
    if optimizer is not None:
        gradients = {eq.lhs.name[1:]: eq.lhs for eq in eqs}
        params = [(graph.symbol(name), gradients[name], key)
                  for name, key in graph.params.items()]
        updates = optimizer.updates(params)
    return Derivation(graph, eqs, graph.updates + updates, optimizer)


__all__ = ["derive", "backward", "gradient_symbol", "Elementwise"]
