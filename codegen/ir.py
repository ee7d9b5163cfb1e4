"""The kernel IR: a few frozen dataclasses between equations and Numba source.

Arrays are named by their formulas (``dW2``).  Every shape here is a *storage* shape
(see `codegen.layout`): batch-major matrices are already transposed.  Each op answers for
itself which arrays it ``reads`` and ``writes`` and which scalar ``expressions`` it prints,
so passes and renderers never ask by type.

Example:
    >>> op = MatMul("Z1", ("X", False), ("W1", True))
    >>> op.out, sorted(op.reads), sorted(op.writes)
    ('Z1', ['W1', 'X'], ['Z1'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

Operand = tuple[str, bool]  # (array name, use its transpose)
I, J = sp.symbols("i j", integer=True)  # noqa: E741 - the entry a loop body reads: [i, j]


def arrays_read(exprs) -> frozenset[str]:
    """The names of the arrays ``exprs`` read (their ``sympy.Indexed`` bases)."""
    return frozenset(x.base.label.name for e in exprs for x in e.atoms(sp.Indexed))


class Op:
    """What every op answers: the arrays it reads and writes, the scalar expressions it
    prints into code (none by default) and the scalar symbols those read."""

    reads: frozenset[str]
    writes: frozenset[str]

    @property
    def expressions(self) -> tuple[sp.Expr, ...]:
        return ()

    @property
    def symbols(self) -> set[sp.Symbol]:
        """Scalars the expressions read: every free symbol but array names, the loop
        indices ``i``, ``j`` and dummies."""
        exprs = self.expressions
        found = {s for e in exprs for s in e.free_symbols
                 if isinstance(s, sp.Symbol) and not isinstance(s, sp.Dummy)}
        return found - {x.label for e in exprs for x in e.atoms(sp.IndexedBase)} - {I, J}


@dataclass(frozen=True)
class MatMul(Op):
    """``out = a·b`` on stored arrays (BLAS), each operand possibly transposed; with a
    ``scale``, ``out += scale·a·b`` instead (one GEMM with β = 1: ``P −= c·AᵀB``)."""

    out: str
    a: Operand
    b: Operand
    formula: str = ""
    scale: sp.Expr | None = None

    @property
    def reads(self) -> frozenset[str]:
        scaled = (self.out,) if self.scale is not None else ()  # β = 1 reads out
        return frozenset((self.a[0], self.b[0], *scaled))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset((self.out,))

    @property
    def expressions(self) -> tuple[sp.Expr, ...]:
        return () if self.scale is None else (self.scale,)


@dataclass(frozen=True)
class Loop(Op):
    """Entry-wise assignments over a (rows, cols) storage space, fused into one loop.

    ``assigns`` are ``(target, expr)``; a target is an array name or, for a value no
    other kernel reads, a local scalar (``locals``).  Expressions read arrays through
    ``sympy.Indexed`` at ``[i, j]`` (matrices) or ``[j]`` (vectors broadcast over rows).
    ``totals`` are ``(out, target)``: ``out[j] = Σ_i target[i, j]``, summed in the same
    pass (a bias gradient beside its ``dZ``; `codegen.fusion.sum_columns_in_loops`).
    """

    space: tuple[sp.Expr, sp.Expr]
    assigns: tuple[tuple[str, sp.Expr], ...]
    locals: frozenset[str] = frozenset()
    formulas: tuple[str, ...] = ()
    totals: tuple[tuple[str, str], ...] = ()

    @property
    def index(self) -> tuple[sp.Symbol, ...]:
        """The entry the body stands at: ``(i, j)`` or ``(i,)``."""
        return (I, J) if len(self.space) == 2 else (I,)

    @property
    def stored(self) -> tuple[str, ...]:
        """The targets that are arrays, in order (the locals are registers)."""
        return tuple(t for t, _ in self.assigns if t not in self.locals)

    @property
    def reads(self) -> frozenset[str]:
        return arrays_read(self.expressions) - self.locals

    @property
    def writes(self) -> frozenset[str]:
        return frozenset(self.stored) | {out for out, _ in self.totals}

    @property
    def expressions(self) -> tuple[sp.Expr, ...]:
        return tuple(e for _, e in self.assigns)


@dataclass(frozen=True)
class RowSum(Op):
    """``out[j] = Σ_i src[i, j]``: the sum of the stored rows (``G·1``, over the batch)."""

    out: str
    src: str
    formula: str = ""

    @property
    def reads(self) -> frozenset[str]:
        return frozenset((self.src,))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset((self.out,))


@dataclass(frozen=True)
class RowReduce(Op):
    """``out[i, 0] = scale · Σ_j expr[i, j]``: each stored row's total of an entry-wise
    expression (``1ᵀ·M`` sums the features of each sample; a statistic such as a mean or
    a variance is one pass over the row, the entries never stored)."""

    out: str
    space: tuple[sp.Expr, sp.Expr]
    expr: sp.Expr
    scale: sp.Expr
    formula: str = ""

    @property
    def reads(self) -> frozenset[str]:
        return arrays_read((self.expr,))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset((self.out,))

    @property
    def expressions(self) -> tuple[sp.Expr, ...]:
        return (self.expr, self.scale)


@dataclass(frozen=True)
class RowOp(Op):
    """An operation on each stored row as a whole: softmax, log-softmax and their VJPs.

    ``softmax_log_softmax`` writes the softmax to ``out`` and the log-softmax of the same
    input to ``out2`` in one pass over the row: one exp per entry instead of two.
    """

    kind: str
    out: str
    inputs: tuple[str, ...]
    formula: str = ""
    out2: str = ""

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.out, self.out2) if self.out2 else (self.out,)

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(self.inputs)

    @property
    def writes(self) -> frozenset[str]:
        return frozenset(self.outputs)


@dataclass(frozen=True)
class Reduce(Op):
    """``out = scale · Σ_{i,j} expr``: a scalar (``out`` is a value, not an array)."""

    out: str
    space: tuple[sp.Expr, sp.Expr]
    expr: sp.Expr
    scale: sp.Expr
    formula: str = ""

    @property
    def reads(self) -> frozenset[str]:
        return arrays_read((self.expr,))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset()

    @property
    def expressions(self) -> tuple[sp.Expr, ...]:
        return (self.expr, self.scale)


@dataclass(frozen=True)
class OneHot(Op):
    """``out[i, :] = e_{indices[i]}``: integer indices to rows of the identity matrix."""

    out: str
    indices: str

    @property
    def reads(self) -> frozenset[str]:
        return frozenset((self.indices,))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset((self.out,))


@dataclass(frozen=True)
class CheckFinite(Op):
    """Return early unless the scalar ``value`` (if any) and every array in ``arrays`` are
    finite: no op after the check runs on NaN or Inf, so the arrays they would write keep
    their values.

    ``arrays`` are ``(name, ndim)`` pairs; the function then returns ``(value, finite)``.
    """

    value: str | None
    arrays: tuple[tuple[str, int], ...]

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.arrays)

    @property
    def writes(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class Buffer:
    """An array a program reads or writes, with its storage shape (1-D or 2-D)."""

    name: str
    shape: tuple[sp.Expr, ...]


@dataclass(frozen=True)
class Program:
    """One kernel function: its ops in order and the arrays and scalars it takes."""

    name: str
    ops: tuple
    arguments: tuple[str, ...]
    scalars: tuple[str, ...]
    buffers: dict[str, Buffer] = field(default_factory=dict, hash=False, compare=False)
    returns: str | None = None

    @property
    def guarded(self) -> bool:
        """Whether a `CheckFinite` is among the ops: the function returns ``(value, finite)``."""
        return any(isinstance(op, CheckFinite) for op in self.ops)
