"""The equation language: SymPy matrix expressions that symnet writes and codegen lowers.

Standard SymPy covers products, transposes, sums and the ones vector (``W*X``, ``dZ*A.T``,
``b*OneMatrix(1, N)``, ``dZ*OneMatrix(N, 1)``).  The classes here add the few operations
SymPy has no node for.  Each one knows its shape and its meaning on explicit matrices
(``evaluate``), which is what verification expands to scalars; printing and lowering
dispatch on the class.

Example:
    >>> import sympy as sp
    >>> z = sp.Symbol("z")
    >>> Z = sp.MatrixSymbol("Z1", 2, 3)
    >>> A = Elementwise(sp.Lambda(z, sp.tanh(z)), Z, label="tanh")
    >>> A.shape
    (2, 3)
"""

from __future__ import annotations

from functools import singledispatch

import sympy as sp
from sympy.core.symbol import Str


class Elementwise(sp.MatrixExpr):
    """``body`` applied entry by entry to equally shaped operands.

    ``body`` is a ``Lambda`` with one variable per operand; any other free symbol in it is
    a scalar (a learning rate, the batch size).  ``label`` names the function for printing
    (``σ(Z1)``); without one the body itself is printed.
    """

    def __new__(cls, body: sp.Lambda, *operands: sp.MatrixExpr, label: str = ""):
        if operands and isinstance(operands[0], Str):  # rebuilt from .args
            label, operands = operands[0].name, operands[1:]
        if len(body.variables) != len(operands):
            raise ValueError(f"body takes {len(body.variables)} operands, got {len(operands)}")
        return sp.Basic.__new__(cls, body, Str(label), *operands)

    @property
    def body(self) -> sp.Lambda:
        return self.args[0]

    @property
    def label(self) -> str:
        return self.args[1].name

    @property
    def operands(self) -> tuple[sp.MatrixExpr, ...]:
        return self.args[2:]

    @property
    def shape(self):
        return self.operands[0].shape

    def evaluate(self, *operands: sp.Matrix) -> sp.Matrix:
        rows, cols = operands[0].shape
        return sp.Matrix(rows, cols, lambda i, j: self.body(*(m[i, j] for m in operands)))


class _ColumnOp(sp.MatrixExpr):
    """An operation on each column (sample) of its operands, keeping the shape.

    Subclasses define ``entry(j, *columns, total)``: entry ``j`` of the result, where each
    column is a function from a row index to a scalar and ``total(f)`` sums ``f`` over the
    rows.  The same formula then expands explicit matrices (verification) and indexed
    symbols of any height (the derivation's simplifications).
    """

    def __new__(cls, *operands: sp.MatrixExpr):
        return sp.Basic.__new__(cls, *operands)

    @property
    def shape(self):
        return self.args[0].shape

    def evaluate(self, *operands: sp.Matrix) -> sp.Matrix:
        rows, cols = operands[0].shape

        def column(j):
            getters = [(lambda i, m=m: m[i, j]) for m in operands]
            return [self.entry(i, *getters, total=lambda f: sp.Add(*(f(k) for k in range(rows))))
                    for i in range(rows)]

        return sp.Matrix(rows, cols, lambda i, j: column(j)[i]) if rows * cols else sp.zeros(0)


class Softmax(_ColumnOp):
    """Column-wise softmax: ``exp(z_i) / Σ_k exp(z_k)``."""

    @staticmethod
    def entry(i, z, total):
        return sp.exp(z(i)) / total(lambda k: sp.exp(z(k)))


class LogSoftmax(_ColumnOp):
    """Column-wise log-softmax: ``z_i − log Σ_k exp(z_k)``."""

    @staticmethod
    def entry(i, z, total):
        return z(i) - sp.log(total(lambda k: sp.exp(z(k))))


class SoftmaxVJP(_ColumnOp):
    """``S ⊙ (G − 1·(1ᵀ(S ⊙ G)))``: the gradient through ``S = softmax(Z)`` given ``G = dS``."""

    @staticmethod
    def entry(i, s, g, total):
        return s(i) * (g(i) - total(lambda k: s(k) * g(k)))


class LogSoftmaxVJP(_ColumnOp):
    """``G − exp(L) ⊙ 1·(1ᵀG)``: the gradient through ``L = log_softmax(Z)`` given ``G = dL``."""

    @staticmethod
    def entry(i, logp, g, total):
        return g(i) - sp.exp(logp(i)) * total(g)


class Total(sp.Expr):
    """The sum of every entry of a matrix, ``1ᵀ·M·1``: a matrix reduced to a scalar."""

    def __new__(cls, matrix: sp.MatrixExpr):
        return sp.Expr.__new__(cls, matrix)

    @property
    def matrix(self) -> sp.MatrixExpr:
        return self.args[0]

    def evaluate(self, matrix: sp.Matrix) -> sp.Expr:
        return sp.Add(*matrix)


@singledispatch
def evaluate(expr: sp.Basic, env: dict[str, sp.Matrix]) -> sp.Basic:
    """Expand ``expr`` to an explicit matrix (or scalar), given explicit values by name.

    Example:
        >>> W = sp.MatrixSymbol("W", 1, 2); X = sp.MatrixSymbol("X", 2, 1)
        >>> evaluate(W * X, {"W": sp.Matrix([[1, 2]]), "X": sp.Matrix([3, 4])})
        Matrix([[11]])
    """
    if isinstance(expr, sp.Expr) and not expr.is_Matrix:  # a scalar: expand its totals
        return expr.xreplace({t: evaluate(t, env) for t in expr.atoms(Total)})
    raise TypeError(f"cannot evaluate {type(expr).__name__}: {expr}")


@evaluate.register
def _(expr: sp.MatrixSymbol, env):
    return env[expr.name]


@evaluate.register
def _(expr: sp.OneMatrix, env):
    return sp.ones(*expr.shape)


@evaluate.register
def _(expr: Elementwise, env):
    return expr.evaluate(*(evaluate(op, env) for op in expr.operands))


@evaluate.register(_ColumnOp)
@evaluate.register(Total)
def _(expr, env):
    return expr.evaluate(*(evaluate(op, env) for op in expr.args))


@evaluate.register
def _(expr: sp.Transpose, env):
    return evaluate(expr.arg, env).T


@evaluate.register
def _(expr: sp.MatMul, env):
    result = sp.Mul(*(a for a in expr.args if not getattr(a, "is_Matrix", False)))
    for factor in (a for a in expr.args if getattr(a, "is_Matrix", False)):
        result = result * evaluate(factor, env)
    return result


@evaluate.register
def _(expr: sp.MatAdd, env):
    terms = [evaluate(a, env) for a in expr.args]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
