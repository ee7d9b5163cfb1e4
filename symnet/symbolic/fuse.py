"""Compose a gradient into its only consumer when SymPy finds the result simpler.

This is how ``dZ2 = Ŷ − Y`` is *derived* for softmax + cross-entropy: the sweep yields
``dŶ = −Y/(N·Ŷ)`` and ``dZ2 = softmax_vjp(Ŷ, dŶ)``; composing the two on a column of any
height K (indexed symbols, ``Σ_k``) and using that one-hot columns sum to 1 leaves
``(Ŷ − Y)/N`` with no sum, so the pair becomes one elementwise equation.  The same pass
turns BCE after a sigmoid into ``dZ = (Ŷ − Y)/n``.

Example:
    >>> import symnet as sn
    >>> d = sn.derive(sn.Sequential(sn.Linear(2, 3)), sn.CrossEntropyLoss(reduction="sum"))
    >>> [str(eq.lhs) for eq in d.backward]
    ['dZ1', 'dW1', 'db1']
"""

from __future__ import annotations

import sympy as sp

from codegen.expr import Elementwise, LogSoftmaxVJP, SoftmaxVJP
from symnet.symbolic.rules import simplest

COLUMN_VJPS = (SoftmaxVJP, LogSoftmaxVJP)


def _uses(eqs: list[sp.Eq], symbol: sp.MatrixSymbol) -> int:
    return sum(symbol in eq.rhs.atoms(sp.MatrixSymbol) for eq in eqs)


def _compose_column(op, inner: Elementwise, one_hot: set[str]) -> Elementwise | None:
    """``op`` whose gradient operand is ``inner``, on indexed columns; None if a Σ remains."""
    K = sp.Symbol("K", integer=True, positive=True)
    i, k = sp.symbols("i k", integer=True)
    bases = {m: sp.IndexedBase(m.name) for m in (*op.args, *inner.operands)
             if isinstance(m, sp.MatrixSymbol)}

    def column(m):
        if m is inner or m == inner:
            return lambda r: inner.body(*(bases[o][r] for o in inner.operands))
        return lambda r: bases[m][r]

    def total(f):
        return sp.Sum(f(k), (k, 0, K - 1))

    entry = sp.simplify(op.entry(i, *(column(a) for a in op.args), total=total))
    for name in one_hot:
        entry = entry.subs(sp.Sum(bases_by_name(bases, name)[k], (k, 0, K - 1)), 1)
    entry = sp.simplify(entry)
    if entry.has(sp.Sum):
        return None
    operands = sorted({a for a in entry.atoms(sp.Indexed)}, key=str)
    variables = sp.symbols(f"_e0:{len(operands)}", real=True)
    body = entry.xreplace(dict(zip(operands, variables)))
    matrices = [next(m for m, b in bases.items() if b == o.base) for o in operands]
    return Elementwise(sp.Lambda(variables, simplest(body)), *matrices)


def bases_by_name(bases: dict, name: str):
    return next((b for m, b in bases.items() if m.name == name), sp.IndexedBase(name))


def _compose_elementwise(outer: Elementwise, G: sp.MatrixSymbol, inner: Elementwise):
    """Substitute ``inner`` for ``G`` in ``outer``; keep it only if it got shorter."""
    operands: list[sp.MatrixExpr] = []
    for m in (*outer.operands, *inner.operands):
        if m != G and m not in operands:
            operands.append(m)
    variables = sp.symbols(f"_e0:{len(operands)}", real=True)
    var_of = dict(zip(operands, variables))
    inner_value = inner.body(*(var_of[m] for m in inner.operands))
    composed = outer.body(*(inner_value if m == G else var_of[m] for m in outer.operands))
    composed = simplest(composed)
    before = sp.count_ops(outer.body.expr) + sp.count_ops(inner.body.expr)
    if sp.count_ops(composed) >= before:
        return None
    return Elementwise(sp.Lambda(variables, composed), *operands)


def fuse(backward: list[sp.Eq], one_hot: set[str]) -> list[sp.Eq]:
    """Merge each single-use elementwise gradient into its consumer where that simplifies."""
    eqs = list(backward)
    changed = True
    while changed:
        changed = False
        for n, eq in enumerate(eqs):
            if not isinstance(eq.rhs, Elementwise) or _uses(eqs, eq.lhs) != 1:
                continue
            consumer_index = next(m for m, e in enumerate(eqs) if eq.lhs in e.rhs.atoms(
                sp.MatrixSymbol))
            consumer = eqs[consumer_index]
            fused = None
            if isinstance(consumer.rhs, COLUMN_VJPS) and consumer.rhs.args[1] == eq.lhs:
                op = type(consumer.rhs)(consumer.rhs.args[0], eq.rhs)
                fused = _compose_column(op, eq.rhs, one_hot)
            elif isinstance(consumer.rhs, Elementwise):
                fused = _compose_elementwise(consumer.rhs, eq.lhs, eq.rhs)
            if fused is not None:
                eqs[consumer_index] = sp.Eq(consumer.lhs, fused, evaluate=False)
                del eqs[n]
                changed = True
                break
    return eqs
