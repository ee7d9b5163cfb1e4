"""The kernel IR: a few frozen dataclasses between equations and Numba source.

Arrays are named by their formulas (``dW2``).  Every shape here is a *storage* shape
(see `codegen.layout`): batch-major matrices are already transposed.

Example:
    >>> op = MatMul("Z1", ("X", False), ("W1", True))
    >>> op.out
    'Z1'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

Operand = tuple[str, bool]  # (array name, use its transpose)


@dataclass(frozen=True)
class MatMul:
    """``out = a·b`` on stored arrays (BLAS), each operand possibly transposed; with a
    ``scale``, ``out += scale·a·b`` instead (one GEMM with β = 1: SGD's ``W −= lr·dZᵀX``)."""

    out: str
    a: Operand
    b: Operand
    formula: str = ""
    scale: sp.Expr | None = None


@dataclass(frozen=True)
class Loop:
    """Entry-wise assignments over a (rows, cols) storage space, fused into one loop.

    ``assigns`` are ``(target, expr)``; a target is an array name or, for a value no
    other kernel reads, a local scalar (``locals``).  Expressions read arrays through
    ``sympy.Indexed`` at ``[i, j]`` (matrices) or ``[j]`` (vectors broadcast over rows).
    """

    space: tuple[sp.Expr, sp.Expr]
    assigns: tuple[tuple[str, sp.Expr], ...]
    locals: frozenset[str] = frozenset()
    formulas: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowSum:
    """``out[j] = Σ_i src[i, j]``: a bias gradient, summing over the samples."""

    out: str
    src: str
    formula: str = ""


@dataclass(frozen=True)
class RowOp:
    """A per-sample operation over each stored row: softmax, log-softmax and their VJPs.

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


@dataclass(frozen=True)
class Reduce:
    """``out = scale · Σ_{i,j} expr``: a scalar loss."""

    out: str
    space: tuple[sp.Expr, sp.Expr]
    expr: sp.Expr
    scale: sp.Expr
    formula: str = ""


@dataclass(frozen=True)
class OneHot:
    """``out[i, :] = e_{labels[i]}``: class indices to the one-hot target matrix."""

    out: str
    labels: str


@dataclass(frozen=True)
class CheckFinite:
    """Return early, before any update, unless the loss and every array in ``arrays`` are
    finite: a step whose loss or gradients became NaN or Inf leaves the parameters as they were.

    ``arrays`` are ``(name, ndim)`` pairs; the function then returns ``(loss, finite)``.
    """

    loss: str | None
    arrays: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Buffer:
    """An array the step reads or writes: its storage shape and whether it is 1-D."""

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
