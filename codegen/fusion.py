"""Fuse consecutive entry-wise loops over one space into a single loop (a pure pass).

A broadcast column added to a product and the function then applied to it become one loop;
a chain of entry-wise equations over one space (five or six are common) becomes one loop in
which the values no other op reads are registers, never arrays.

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

from dataclasses import replace

import sympy as sp

from codegen.ir import I, J, Loop, MatMul, RowReduce, RowSum, arrays_read


def fuse_loops(ops: tuple, keep: set[str]) -> tuple:
    """Merge runs of `Loop`s with equal spaces; targets no one else reads become locals."""
    merged: list = []
    for op in ops:
        if isinstance(op, Loop) and merged and isinstance(merged[-1], Loop) and \
                merged[-1].space == op.space:
            last = merged.pop()
            op = Loop(op.space, last.assigns + op.assigns, formulas=last.formulas + op.formulas)
        merged.append(op)
    return _localise(merged, keep)


def fuse_row_totals(ops: tuple, keep: set[str]) -> tuple:
    """A row total (`RowReduce`) of an entry-wise value that nothing else reads computes the
    value itself: ``var = (1/d)·1ᵀ·(xc ⊙ xc)`` is one pass over each row, and ``xc ⊙ xc``
    is never stored (its loop's assignment becomes a register, then dead)."""
    ops = list(ops)
    for k, op in enumerate(ops):
        if not isinstance(op, RowReduce):
            continue
        for name in sorted(op.reads - keep):
            writers = [n for n in range(k) if name in ops[n].writes]
            readers = [n for n, o in enumerate(ops) if name in o.reads and n != k]
            if not writers or readers and readers != [writers[-1]]:
                continue
            n = writers[-1]
            loop = ops[n]
            if not isinstance(loop, Loop) or loop.space != op.space:
                continue
            value = dict(loop.assigns)[name]
            between = set().union(*(o.writes for o in ops[n + 1:k]))
            if arrays_read((value,)) & (between | loop.locals | {name}):
                continue
            op = replace(op, expr=op.expr.xreplace({sp.IndexedBase(name)[I, J]: value}))
            ops[k] = op
    return _localise(ops, keep)


def _localise(merged: list, keep: set[str]) -> tuple:
    result = []
    for k, op in enumerate(merged):
        if isinstance(op, Loop):
            elsewhere = set().union(*(o.reads for n, o in enumerate(merged) if n != k))
            local = {t for t, _ in op.assigns if t not in keep and t not in elsewhere}
            op = replace(op, locals=frozenset(local))
        result.append(op)
    return tuple(result)


def _scaled_update(op: Loop) -> tuple[str, str, sp.Expr] | None:
    """``(P, G, c)`` when ``op`` is the single update ``P = P + c·G`` of a matrix."""
    if len(op.assigns) != 1 or len(op.space) != 2 or op.locals:
        return None
    target, expr = op.assigns[0]
    stored = {x.base.label.name: x for x in expr.atoms(sp.Indexed)}
    if target not in stored or len(stored) != 2:
        return None
    (term,) = set(stored) - {target}
    rest = sp.expand(expr - stored[target])
    scale = sp.simplify(rest / stored[term])
    if scale.has(sp.Indexed) or any(s.name in ("i", "j") for s in scale.free_symbols):
        return None
    return target, term, scale


def fuse_gemm_updates(ops: tuple, keep: set[str]) -> tuple:
    """``G = A·B`` that only the update ``P = P + c·G`` reads becomes one GEMM adding into
    ``P`` (BLAS's β = 1): no ``G`` buffer, no update loop: ``P −= c·AᵀB``.

    Only when nothing between the product and the update writes ``A`` or ``B``, and ``G``
    is not kept (a finite check that reads ``G`` keeps the two apart).
    """
    result = list(ops)
    for k, op in enumerate(ops):
        found = _scaled_update(op) if isinstance(op, Loop) else None
        if found is None:
            continue
        target, term, scale = found
        producers = [n for n, o in enumerate(ops) if term in o.writes]
        readers = [n for n, o in enumerate(ops) if term in o.reads]
        if term in keep or readers != [k] or len(producers) != 1:
            continue
        (n,) = producers
        product = ops[n]
        between = set().union(*(o.writes for o in ops[n + 1:k]))
        if not isinstance(product, MatMul) or product.scale is not None or \
                {product.a[0], product.b[0], target} & between:
            continue
        formula = "\n".join((product.formula, *op.formulas))
        result[k] = MatMul(target, product.a, product.b, formula, scale)
        result[n] = None
    return tuple(o for o in result if o is not None)



def inline_thin_products(ops: tuple, keep: set[str], buffers: dict, most: int) -> tuple:
    """A product whose inner dimension is a constant of at most ``most`` terms, read by one
    entry-wise loop alone, becomes that loop's sum: ``dZ1 = (dZ2·W2) ⊙ H(Z1)`` with 10
    classes is one pass that never stores ``dZ2·W2``.

    Such a product moves an array for few multiply-adds (4096×128 from 10 terms: 10 per
    entry, against 2 loads and a store), so its own pass and its output's trip through
    memory cost more than the sum.  Only where nothing between the two writes an operand,
    and the loop reads the product at its own entry (``[i, j]``) only.
    """
    ops = list(ops)  # each inlined product leaves None, and its reader in its new form
    for n, op in enumerate(ops):
        if not isinstance(op, MatMul) or op.scale is not None or op.out in keep:
            continue
        (a, ta), (b, tb) = op.a, op.b
        k = buffers[a].shape[0 if ta else 1]
        readers = [r for r, o in enumerate(ops) if o is not None and op.out in o.reads]
        if not (isinstance(k, (int, sp.Integer)) and 0 < k <= most) or len(readers) != 1:
            continue
        (r,) = readers
        loop = ops[r]
        between = set().union(*(o.writes for o in ops[n + 1:r] if o is not None))
        if r < n or not isinstance(loop, Loop) or loop.space != tuple(buffers[op.out].shape) \
                or {a, b} & between:
            continue
        entry = sp.IndexedBase(op.out)[I, J]
        if any(x.base.label.name == op.out and x != entry
               for _, e in loop.assigns for x in e.atoms(sp.Indexed)):
            continue
        A, B = sp.IndexedBase(a), sp.IndexedBase(b)
        total = sp.Add(*((A[t, I] if ta else A[I, t]) * (B[J, t] if tb else B[t, J])
                         for t in range(int(k))), evaluate=False)
        assigns = tuple((t, e.xreplace({entry: total})) for t, e in loop.assigns)
        ops[r] = replace(loop, assigns=assigns, formulas=(op.formula, *loop.formulas))
        ops[n] = None
    return tuple(o for o in ops if o is not None)


def sum_columns_in_loops(ops: tuple, keep: set[str]) -> tuple:
    """A column sum (`RowSum`) of an array that an entry-wise loop has just written is
    summed in that loop: ``dZ1`` and ``db1 = dZ1·1`` are one pass, and ``dZ1`` is not read
    from memory a second time.

    Only where the loop is the array's last writer, over the array's own space, and nothing
    between the two reads or writes the sum's output or writes the array.
    """
    ops = list(ops)  # each moved sum leaves None, and its loop in its new form
    for k, op in enumerate(ops):
        if not isinstance(op, RowSum):
            continue
        writers = [n for n in range(k) if ops[n] is not None and op.src in ops[n].writes]
        if not writers:
            continue
        n = writers[-1]
        loop = ops[n]
        between = [o for o in ops[n + 1:k] if o is not None]
        touched = set().union(*(o.reads | o.writes for o in between))
        if not isinstance(loop, Loop) or len(loop.space) != 2 or op.src not in loop.stored \
                or op.out in touched | loop.reads | loop.writes:
            continue
        ops[n] = replace(loop, totals=(*loop.totals, (op.out, op.src)),
                         formulas=(*loop.formulas, op.formula))
        ops[k] = None
    sources = {src for o in ops if isinstance(o, Loop) for _, src in o.totals}
    return _localise([o for o in ops if o is not None], keep | sources)  # re-read per row
