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
from codegen.expr import (
    Elementwise,
    LogSoftmax,
    LogSoftmaxVJP,
    Softmax,
    SoftmaxVJP,
    Total,
    broadcast_base,
)
from codegen.fusion import (
    fuse_gemm_updates,
    fuse_loops,
    fuse_row_totals,
    inline_thin_products,
    sum_columns_in_loops,
)
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
    RowReduce,
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
            self.buffers[m.name] = Buffer(m.name, self.storage(m))
        return m.name

    def at(self, m: sp.MatrixExpr, result: sp.MatrixSymbol) -> sp.Indexed:
        """``m`` at the entry of ``result`` a loop over ``result``'s storage stands at: the
        same entry, or, along a dimension where ``m`` has size 1 (a column ``b`` of
        ``b·1ᵀ``, a row ``r`` of ``1·r``), its only one."""
        m = broadcast_base(m)
        base = sp.IndexedBase(self.buffer(m))
        stored = self.buffers[m.name].shape
        if layout.batch_major(result, self.batch):
            row, col = J, I
        elif len(self.storage(result)) == 1:
            row, col = I, sp.Integer(0)
        else:
            row, col = I, J
        rows, cols = result.shape
        if m.shape[0] not in (rows, 1) or m.shape[1] not in (cols, 1):
            raise TypeError(f"codegen: {m.name} {m.shape} does not broadcast to {result.shape}")
        row = row if m.shape[0] == rows else sp.Integer(0)
        col = col if m.shape[1] == cols else sp.Integer(0)
        if layout.batch_major(m, self.batch):
            return base[col, row]
        return base[row] if len(stored) == 1 else base[row, col]

    def storage(self, m: sp.MatrixSymbol) -> tuple:
        """``m``'s storage shape: its buffer's, or the one `buffer` would give it."""
        if m.name in self.buffers:
            return self.buffers[m.name].shape
        return (m.shape[0], 1) if m.name in self.column_matrices else \
            layout.storage_shape(m, self.batch)

    def named(self, expr: sp.MatrixExpr, name: str) -> sp.MatrixSymbol:
        """``expr`` as a named matrix: itself, or a new buffer ``name`` it is lowered into."""
        expr = broadcast_base(expr)
        if isinstance(expr, sp.MatrixSymbol):
            return expr
        temporary = sp.MatrixSymbol(name, *expr.shape)
        _lower(expr, temporary, self)
        return temporary

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
        rhs = rhs.body(*(sp.Symbol(broadcast_base(m).name) for m in rhs.operands))
    elif isinstance(rhs, sp.Expr) and rhs.has(Total):
        (total,) = rhs.atoms(Total)
        body = total.matrix.body(*(sp.Symbol(broadcast_base(m).name)
                                   for m in total.matrix.operands))
        rhs = rhs.xreplace({total: sp.Function("sum")(body)})
    return f"{eq.lhs} = {rhs}"


def _elementwise(ctx: _Context, expr: Elementwise, result: sp.MatrixSymbol) -> sp.Expr:
    refs = [ctx.at(m, result) for m in expr.operands]
    value = expr.body(*refs)
    # log(softmax) → log-softmax: finite where the softmax underflows to 0.
    for m, r in zip(expr.operands, refs):
        if broadcast_base(m).name in ctx.softmax_input and value.has(sp.log(r)):
            log_ref = sp.IndexedBase(ctx.log_softmax_of(broadcast_base(m).name))[r.indices]
            value = value.xreplace({sp.log(r): log_ref})
    return value


@singledispatch
def _lower(rhs, lhs, ctx: _Context) -> None:
    raise TypeError(f"codegen cannot lower {type(rhs).__name__}: {lhs} = {rhs}")


def _coefficient(rhs: sp.MatMul) -> tuple[sp.Expr, list[sp.MatrixExpr]]:
    scalars = [a for a in rhs.args if not getattr(a, "is_Matrix", False)]
    return sp.Mul(*scalars), [a for a in rhs.args if getattr(a, "is_Matrix", False)]


def _ones(m, rows: int | None = None, cols: int | None = None) -> bool:
    return isinstance(m, sp.OneMatrix) and (rows is None or m.shape[0] == rows) and \
        (cols is None or m.shape[1] == cols)


@_lower.register
def _(rhs: sp.MatMul, lhs, ctx):
    scale, factors = _coefficient(rhs)
    space = ctx.buffers[ctx.buffer(lhs)].shape
    if len(factors) == 2 and _ones(factors[1], cols=1):  # M·1: each row's total
        src = ctx.named(factors[0], f"{lhs.name}_terms")
        ctx.ops.append(RowSum(ctx.buffer(lhs), ctx.buffer(src), f"{lhs} = {rhs}"))
        if scale != 1:
            ctx.ops.append(Loop(space, ((lhs.name, scale * ctx.at(lhs, lhs)),),
                                formulas=(f"{lhs} *= {scale}",)))
        return
    if len(factors) == 2 and _ones(factors[0], rows=1):  # 1ᵀ·M: each column's total
        _column_totals(scale, factors[1], lhs, ctx)
        return
    if len(factors) == 1 or any(isinstance(f, sp.OneMatrix) for f in factors):
        # c·M, or a broadcast (1·r, b·1ᵀ) on its own: entry by entry
        unscaled = factors[0] if len(factors) == 1 else sp.MatMul(*factors)
        ctx.ops.append(Loop(space, ((lhs.name, scale * _entry(ctx, unscaled, lhs)),),
                            formulas=(f"{lhs} = {rhs}",)))
        return
    if len(factors) != 2:
        raise TypeError(f"codegen lowers products of two matrices, got {lhs} = {rhs}")
    factors = [f if isinstance(f, sp.Transpose) else ctx.named(f, f"{lhs.name}_factor{k}")
               for k, f in enumerate(factors)]
    for f in factors:
        ctx.buffer(f.arg if isinstance(f, sp.Transpose) else f)
    a, b = layout.product(lhs, factors[0], factors[1], ctx.batch)
    product = rhs if scale == 1 else sp.MatMul(*factors)
    ctx.ops.append(MatMul(ctx.buffer(lhs), a, b, f"{lhs} = {product}"))
    if scale != 1:
        ctx.ops.append(Loop(space, ((lhs.name, scale * ctx.at(lhs, lhs)),),
                            formulas=(f"{lhs} *= {scale}",)))


def _column_totals(scale, M: sp.MatrixExpr, lhs, ctx) -> None:
    """``lhs = scale·1ᵀ·M``: one total per sample, in one pass over each stored row (the
    entries of an entry-wise ``M`` are computed there, never stored)."""
    if not layout.batch_major(M, ctx.batch):
        raise TypeError(f"codegen sums features of a batch (…×N) only, got {lhs} = 1ᵀ·{M}")
    stand_in = sp.MatrixSymbol(f"{lhs.name}_entries", *M.shape)
    ctx.buffer(lhs)
    expr = _entry(ctx, M, stand_in)
    shown = "" if scale == 1 else f"{scale}·"
    ctx.ops.append(RowReduce(lhs.name, (ctx.batch, M.shape[0]), expr, scale,
                             f"{lhs} = {shown}1ᵀ·{M}"))


def _entry(ctx: _Context, term: sp.MatrixExpr, result: sp.MatrixSymbol) -> sp.Expr:
    """``term`` at the current entry of a loop over ``result``: a matrix (or broadcast) is
    read, an entry-wise expression computed in place, a scaled term scaled; anything else
    (a product, a sum of rows) is lowered into a buffer of its own first."""
    if isinstance(term, Elementwise):
        for m in term.operands:
            ctx.buffer(broadcast_base(m))
        return _elementwise(ctx, term, result)
    if isinstance(term, sp.MatMul):
        scale, factors = _coefficient(term)
        if scale != 1:
            return scale * _entry(ctx, sp.MatMul(*factors), result)
        if len(factors) == 1:
            return _entry(ctx, factors[0], result)
    if isinstance(broadcast_base(term), sp.MatrixSymbol):
        return ctx.at(term, result)
    temporary = ctx.named(term, f"{result.name}_term{len(ctx.buffers)}")
    return ctx.at(temporary, result)


@_lower.register
def _(rhs: sp.MatAdd, lhs, ctx):
    products = [t for t in rhs.args if not _is_broadcast_column(t)]
    columns = [t for t in rhs.args if _is_broadcast_column(t)]
    space = ctx.buffers[ctx.buffer(lhs)].shape
    if len(products) == 1 and _is_product(products[0]):
        # Z = W·X + b·1ᵀ: the product, then the columns added in place
        _lower(products[0], lhs, ctx)
        value = ctx.at(lhs, lhs) + sum(ctx.at(t.args[0], lhs) for t in columns)
        ctx.ops.append(Loop(space, ((lhs.name, value),), formulas=(f"{lhs} += bias",)))
        return
    # A sum of several terms (a derivative reaching a matrix along several paths, as for
    # one used twice, or a residual path): each product into a buffer of its own, then one
    # entry-wise sum, which fuses with the loops that read it.
    value = sum(ctx.at(t.args[0], lhs) for t in columns)
    for k, term in enumerate(products):
        if _is_product(term) or _is_sum(term):
            part = sp.MatrixSymbol(f"{lhs.name}_term{k + 1}", *lhs.shape)
            _lower(term, part, ctx)
            term = part
        value += _entry(ctx, term, lhs)
    ctx.ops.append(Loop(space, ((lhs.name, value),), formulas=(f"{lhs} = {rhs}",)))


def _is_broadcast_column(term) -> bool:
    """``c·1ᵀ``: a column repeated along every column of the result."""
    return isinstance(term, sp.MatMul) and isinstance(term.args[-1], sp.OneMatrix) and \
        term.args[-1].shape[0] == 1 and len(term.args) == 2


def _is_sum(term) -> bool:
    """``M·1`` or ``1ᵀ·M`` (scaled or not): a reduction, lowered into a buffer of its own."""
    if not isinstance(term, sp.MatMul):
        return False
    factors = _coefficient(term)[1]
    return len(factors) == 2 and (_ones(factors[1], cols=1) or _ones(factors[0], rows=1))


def _is_product(term) -> bool:
    """A product of two matrices (no ones vector): BLAS's job."""
    if not isinstance(term, sp.MatMul):
        return False
    _, factors = _coefficient(term)
    return len(factors) == 2 and not any(isinstance(f, sp.OneMatrix) for f in factors)


@_lower.register
def _(rhs: Elementwise, lhs, ctx):
    space = ctx.buffers[ctx.buffer(lhs)].shape
    ctx.ops.append(Loop(space, ((lhs.name, _entry(ctx, rhs, lhs)),),
                        formulas=(_formula(sp.Eq(lhs, rhs, evaluate=False)),)))


@_lower.register
def _(rhs: sp.MatrixSymbol, lhs, ctx):  # a copy: the model returns a value it was given
    space = ctx.buffers[ctx.buffer(lhs)].shape
    ctx.ops.append(Loop(space, ((lhs.name, ctx.at(rhs, lhs)),), formulas=(f"{lhs} = {rhs}",)))


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
        ctx.buffer(broadcast_base(m))
    first = broadcast_base(body.operands[0])
    space = ctx.buffers[first.name].shape
    scale = eq.rhs / total
    ctx.ops.append(Reduce(eq.lhs.name, space, _elementwise(ctx, body, first), scale,
                          _formula(eq)))


def lower(name: str, equations: list[sp.Eq], batch: sp.Symbol, leading: tuple[str, ...] = (),
          keep: frozenset[str] = frozenset(), one_hot: dict[str, str] | None = None,
          guard_at: int | None = None, gemm_updates: bool = False,
          thin_products: int = 0, column_totals: bool = False) -> Program:
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
    ``thin_products``: a product of at most this many terms per entry, read by one
    entry-wise loop, is summed inside that loop (`inline_thin_products`; 0: never).
    ``column_totals``: a column sum of an array an entry-wise loop just wrote is summed in
    that loop (`sum_columns_in_loops`; CPU only).
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
    ops = fuse_row_totals(ops, set(keep) | set(leading))
    if gemm_updates:
        ops = fuse_gemm_updates(ops, set(keep) | set(leading))
    if thin_products:
        ops = inline_thin_products(ops, set(keep) | set(leading), ctx.buffers, thin_products)
    if column_totals:
        ops = sum_columns_in_loops(ops, set(keep) | set(leading))
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

