"""Equations → kernel IR: one op (or a few) per equation, layouts fixed by `layout`.

Each right-hand side form has one lowering, registered by type.  Sums whose body takes
the log of a softmax read a log-softmax computed alongside it (never ``log(0)``).

Example:
    >>> import sympy as sp
    >>> N = sp.Symbol("N")
    >>> W = sp.MatrixSymbol("W1", 3, 2); X = sp.MatrixSymbol("X", 2, N)
    >>> Z = sp.MatrixSymbol("Z1", 3, N)
    >>> program = lower("forward", [sp.Eq(Z, W * X, evaluate=False)], N, leading=("X",))
    >>> program.ops
    (MatMul(out='Z1', a=('X', False), b=('W1', True), formula='Z1 = W1*X', scale=None),)
    >>> program.arguments
    ('X', 'W1', 'Z1')
"""

from __future__ import annotations

from functools import singledispatch

import sympy as sp

from codegen import layout
from codegen.expr import Elementwise, LogSoftmax, LogSoftmaxVJP, Softmax, SoftmaxVJP, Total
from codegen.fusion import fuse_gemm_updates, fuse_loops
from codegen.ir import (
    Buffer,
    CheckFinite,
    I,
    J,
    Loop,
    MatMul,
    OneHot,
    Program,
    Reduce,
    RowOp,
    RowSum,
)

ROW_OPS = {Softmax: "softmax", LogSoftmax: "log_softmax", SoftmaxVJP: "softmax_vjp",
           LogSoftmaxVJP: "log_softmax_vjp"}


def _column_matrices(equations: list[sp.Eq]) -> set[str]:
    """Column vectors stored as (rows, 1) matrices rather than 1-D: those in a product.

    A (rows, 1) factor or result of a product stays 2-D, as BLAS needs it, and so does every
    column that an elementwise equation combines with one of those.
    """
    def column(m) -> bool:
        return isinstance(m, sp.MatrixSymbol) and m.shape[1] == 1

    found: set[str] = set()
    for eq in equations:
        terms = eq.rhs.args if isinstance(eq.rhs, sp.MatAdd) else (eq.rhs,)
        for term in terms:
            if isinstance(term, sp.MatMul) and not term.has(sp.OneMatrix):
                factors = (eq.lhs, *(f.arg if isinstance(f, sp.Transpose) else f
                                     for f in term.args))
                found |= {f.name for f in factors if column(f)}
    changed = True
    while changed:
        groups = [[m.name for m in (eq.lhs, *eq.rhs.operands) if column(m)]
                  for eq in equations if isinstance(eq.rhs, Elementwise)]
        grown = found.union(*(g for g in groups if found.intersection(g)))
        changed, found = grown != found, grown
    return found


class _Context:
    def __init__(self, batch: sp.Symbol, column_matrices: set[str] = frozenset()):
        self.batch = batch
        self.buffers: dict[str, Buffer] = {}
        self.softmax_input: dict[str, str] = {}
        self.ops: list = []
        self.column_matrices = column_matrices

    def buffer(self, m: sp.MatrixSymbol) -> str:
        if m.name not in self.buffers:
            shape = (m.shape[0], 1) if m.name in self.column_matrices else \
                layout.storage_shape(m, self.batch)
            self.buffers[m.name] = Buffer(m.name, shape)
        return m.name

    def ref(self, m: sp.MatrixSymbol, space: tuple) -> sp.Indexed:
        """``m`` at the loop's current entry: [i, j], [i] or, for a column broadcast along
        the stored rows, [j]."""
        shape = self.buffers[self.buffer(m)].shape
        base = sp.IndexedBase(m.name)
        if len(shape) == len(space):
            return base[I, J] if len(space) == 2 else base[I]
        return base[J]

    def log_softmax_of(self, name: str) -> str:
        """The name of a log-softmax buffer for softmax output ``name`` (added once)."""
        out = f"log_{name}"
        if out not in self.buffers:
            self.buffers[out] = Buffer(out, self.buffers[name].shape)
            # The softmax's own pass over the row computes it too (one exp per entry): its
            # input is ready there and nothing else writes the new buffer.
            k, op = next((k, op) for k, op in enumerate(self.ops)
                         if isinstance(op, RowOp) and op.kind == "softmax" and op.out == name)
            self.ops[k] = RowOp("softmax_log_softmax", name, op.inputs,
                                f"{op.formula}\n{out} = log_softmax({op.inputs[0]})", out2=out)
        return out


def _formula(eq: sp.Eq) -> str:
    """``dZ1 = dA1*A1*(1 - A1)``: the equation with operands named, for a comment."""
    rhs = eq.rhs
    if isinstance(rhs, Elementwise):
        rhs = rhs.body(*(sp.Symbol(m.name) for m in rhs.operands))
    elif isinstance(rhs, sp.Expr) and rhs.has(Total):
        (total,) = rhs.atoms(Total)
        body = total.matrix.body(*(sp.Symbol(m.name) for m in total.matrix.operands))
        rhs = rhs.xreplace({total: sp.Function("sum")(body)})
    return f"{eq.lhs} = {rhs}"


def _elementwise(ctx: _Context, expr: Elementwise, space: tuple) -> sp.Expr:
    refs = [ctx.ref(m, space) for m in expr.operands]
    value = expr.body(*refs)
    # log(softmax) → log-softmax: finite where the softmax underflows to 0.
    for m, r in zip(expr.operands, refs):
        if m.name in ctx.softmax_input and value.has(sp.log(r)):
            log_ref = sp.IndexedBase(ctx.log_softmax_of(m.name))[r.indices]
            value = value.xreplace({sp.log(r): log_ref})
    return value


@singledispatch
def _lower(rhs, lhs, ctx: _Context) -> None:
    raise TypeError(f"codegen cannot lower {type(rhs).__name__}: {lhs} = {rhs}")


@_lower.register
def _(rhs: sp.MatMul, lhs, ctx):
    factors = rhs.args
    if len(factors) == 2 and isinstance(factors[1], sp.OneMatrix):
        ctx.ops.append(RowSum(ctx.buffer(lhs), ctx.buffer(factors[0]), f"{lhs} = {rhs}"))
        return
    if len(factors) != 2:
        raise TypeError(f"codegen lowers products of two matrices, got {lhs} = {rhs}")
    for f in factors:
        ctx.buffer(f.arg if isinstance(f, sp.Transpose) else f)
    a, b = layout.product(lhs, factors[0], factors[1], ctx.batch)
    ctx.ops.append(MatMul(ctx.buffer(lhs), a, b, f"{lhs} = {rhs}"))


@_lower.register
def _(rhs: sp.MatAdd, lhs, ctx):
    products = [t for t in rhs.args if not _is_broadcast_column(t)]
    columns = [t for t in rhs.args if _is_broadcast_column(t)]
    space = ctx.buffers[ctx.buffer(lhs)].shape
    if len(products) == 1:  # Z = W·X + b·1ᵀ: the product, then the columns added in place
        _lower(products[0], lhs, ctx)
        value = ctx.ref(lhs, space) + sum(ctx.ref(t.args[0], space) for t in columns)
        ctx.ops.append(Loop(space, ((lhs.name, value),), formulas=(f"{lhs} += bias",)))
        return
    # A sum of several products (a derivative reaching a matrix along several paths, as for
    # one used twice): each product into a buffer of its own, then one entry-wise sum,
    # which fuses with the loops that read it.
    value = sum(ctx.ref(t.args[0], space) for t in columns)
    for k, term in enumerate(products):
        if not isinstance(term, sp.MatrixSymbol):
            part = sp.MatrixSymbol(f"{lhs.name}_term{k + 1}", *lhs.shape)
            _lower(term, part, ctx)
            term = part
        value += ctx.ref(term, space)
    ctx.ops.append(Loop(space, ((lhs.name, value),), formulas=(f"{lhs} = {rhs}",)))


def _is_broadcast_column(term) -> bool:
    """``c·1ᵀ``: a column repeated along every column of the result."""
    return isinstance(term, sp.MatMul) and isinstance(term.args[-1], sp.OneMatrix) and \
        term.args[-1].shape[0] == 1


@_lower.register
def _(rhs: Elementwise, lhs, ctx):
    space = ctx.buffers[ctx.buffer(lhs)].shape
    for m in rhs.operands:
        ctx.buffer(m)
    ctx.ops.append(Loop(space, ((lhs.name, _elementwise(ctx, rhs, space)),),
                        formulas=(_formula(sp.Eq(lhs, rhs, evaluate=False)),)))


def _row_op(rhs, lhs, ctx):
    inputs = tuple(ctx.buffer(a) for a in rhs.args)
    if not layout.batch_major(lhs, ctx.batch):
        raise TypeError(f"{type(rhs).__name__} needs samples as columns: {lhs} = {rhs}")
    ctx.ops.append(RowOp(ROW_OPS[type(rhs)], ctx.buffer(lhs), inputs, f"{lhs} = {rhs}"))
    if isinstance(rhs, Softmax):
        ctx.softmax_input[lhs.name] = inputs[0]


for _cls in ROW_OPS:
    _lower.register(_cls)(_row_op)


def _scalar_reduction(eq: sp.Eq, ctx: _Context) -> None:
    (total,) = eq.rhs.atoms(Total)
    body = total.matrix
    for m in body.operands:
        ctx.buffer(m)
    space = ctx.buffers[body.operands[0].name].shape
    scale = eq.rhs / total
    ctx.ops.append(Reduce(eq.lhs.name, space, _elementwise(ctx, body, space), scale,
                          _formula(eq)))


def lower(name: str, equations: list[sp.Eq], batch: sp.Symbol, leading: tuple[str, ...] = (),
          keep: frozenset[str] = frozenset(), one_hot: dict[str, str] | None = None,
          guard_at: int | None = None, gemm_updates: bool = False) -> Program:
    """Lower ``equations`` (in order) to a fused `Program` named ``name``.

    Arguments are ``leading`` (the per-call inputs) followed by every other array the
    program touches, in order of first use; values that only live inside one fused loop
    become registers unless ``keep`` names them.  ``one_hot`` maps a matrix to the argument
    of integer indices it is built from (`OneHot`).  A scalar equation (a `Total`) is the
    return value.

    ``guard_at`` (the index of an equation) puts a `CheckFinite` there: the program returns
    ``(value, finite)`` and skips that equation and every later one unless the scalar and
    the arrays those equations read from earlier ones are finite.  No equation before it may
    write a ``keep`` array (those the caller keeps between calls).

    ``gemm_updates`` lets a product that only an update ``P = P + c·G`` reads add into ``P``
    directly (`fuse_gemm_updates`; the CPU renderer supports it, the CUDA one does not).
    """
    ctx = _Context(batch, _column_matrices(equations))
    returns = None
    for target, indices in (one_hot or {}).items():
        ctx.ops.append(OneHot(target, indices))
    split = None
    for k, eq in enumerate(equations):
        if k == guard_at:
            split = len(ctx.ops)
        if isinstance(eq.lhs, sp.Symbol):
            _scalar_reduction(eq, ctx)
            returns = eq.lhs.name
        else:
            _lower(eq.rhs, eq.lhs, ctx)
    if guard_at is not None:
        ctx.ops.insert(len(ctx.ops) if split is None else split, _guard(ctx, split, keep, returns))
    ops = fuse_loops(tuple(ctx.ops), set(keep) | set(leading))
    if gemm_updates:
        ops = fuse_gemm_updates(ops, set(keep) | set(leading))
    arrays: list[str] = list(leading)
    for op in ops:
        for n in sorted(op.reads) + sorted(op.writes):
            if n not in arrays and (n in ctx.buffers or n in leading):
                arrays.append(n)
    index = {I.name, J.name, batch.name}  # by name: a symbol called i would be the index
    scalars = sorted({s.name for op in ops for s in op.symbols} - index - set(arrays) -
                     {f"t_{t}" for op in ops if isinstance(op, Loop) for t, _ in op.assigns})
    return Program(name, ops, tuple(arrays), tuple(scalars), ctx.buffers, returns)


def _guard(ctx: _Context, split: int | None, keep: frozenset[str],
           value: str | None) -> CheckFinite:
    """The finite check before the ops from ``split`` on, after checking that none before
    writes a kept array."""
    before, after = ctx.ops[:split], ctx.ops[split:] if split is not None else []
    written = set().union(*(op.writes for op in before))
    early = written & set(keep)
    if early:
        raise ValueError(f"check_finite: {sorted(early)} are updated before the finite check; "
                         "the updates must come after the loss and every gradient")
    needed = sorted(set().union(*(op.reads for op in after)) & written)
    return CheckFinite(value, tuple((n, len(ctx.buffers[n].shape)) for n in needed))

