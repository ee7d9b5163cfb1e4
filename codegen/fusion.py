"""Fuse consecutive entry-wise loops over one space into a single loop (a pure pass).

Bias + activation become one loop; the whole Adam update of a parameter (g, m, v, m̂, v̂,
the step) becomes one loop in which m̂ and v̂ are scalars in registers, never arrays.

Example:
    >>> import sympy as sp
    >>> a, b = sp.IndexedBase("a"), sp.IndexedBase("b")
    >>> i, j = sp.symbols("i j", integer=True)
    >>> ops = (Loop((2, 2), (("a", b[i, j] + 1),)), Loop((2, 2), (("c", a[i, j] * 2),)))
    >>> fused = fuse_loops(ops, keep={"c"})
    >>> len(fused), sorted(fused[0].locals)
    (1, ['a'])
"""

from __future__ import annotations

import sympy as sp

from codegen.ir import Loop, MatMul, Reduce, RowOp, RowSum


def reads(op) -> set[str]:
    """Names of the arrays an op reads."""
    if isinstance(op, MatMul):
        return {op.a[0], op.b[0]}
    if isinstance(op, RowSum):
        return {op.src}
    if isinstance(op, RowOp):
        return set(op.inputs)
    if isinstance(op, Loop):
        found = {x.base.label.name for _, e in op.assigns for x in e.atoms(sp.Indexed)}
        return found - op.locals
    if isinstance(op, Reduce):
        return {x.base.label.name for x in op.expr.atoms(sp.Indexed)}
    return {getattr(op, "labels", "")}


def fuse_loops(ops: tuple, keep: set[str]) -> tuple:
    """Merge runs of `Loop`s with equal spaces; targets no one else reads become locals."""
    merged: list = []
    for op in ops:
        if isinstance(op, Loop) and merged and isinstance(merged[-1], Loop) and \
                merged[-1].space == op.space:
            last = merged.pop()
            op = Loop(op.space, last.assigns + op.assigns, formulas=last.formulas + op.formulas)
        merged.append(op)
    result = []
    for k, op in enumerate(merged):
        if isinstance(op, Loop):
            elsewhere = set().union(*(reads(o) for n, o in enumerate(merged) if n != k))
            local = {t for t, _ in op.assigns if t not in keep and t not in elsewhere}
            op = Loop(op.space, op.assigns, frozenset(local), op.formulas)
        result.append(op)
    return tuple(result)
