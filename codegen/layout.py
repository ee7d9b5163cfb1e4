"""Where each matrix lives in memory, chosen once, at lowering time.

Samples are columns in the equations, but a batch arrives batch-major, (N, features),
as in PyTorch.  So a matrix whose columns are the batch is stored transposed: its
storage is (N, rows), C-contiguous, which is exactly the user's array, no copy.  Column
vectors are stored 1-D; everything else as it is.  With that fixed, a
product ``C = A·B`` becomes one BLAS call on the stored arrays, picking the transposes
(``Cᵀ = Bᵀ·Aᵀ`` when C is batch-major), so no step ever copies a transpose.

Example:
    >>> import sympy as sp
    >>> N = sp.Symbol("N")
    >>> storage_shape(sp.MatrixSymbol("Z1", 8, N), N)
    (N, 8)
"""

from __future__ import annotations

import sympy as sp


def batch_major(m: sp.MatrixExpr, batch: sp.Symbol) -> bool:
    return m.shape[1] == batch and m.shape[0] != batch


def storage_shape(m: sp.MatrixExpr, batch: sp.Symbol) -> tuple:
    rows, cols = m.shape
    if batch_major(m, batch):
        return (cols, rows)
    if cols == 1:
        return (rows,)
    return (rows, cols)


def stored_view(m: sp.MatrixExpr, batch: sp.Symbol) -> tuple[str, bool]:
    """``(name, t)`` with logical ``m`` = stored array, transposed if ``t``."""
    if isinstance(m, sp.Transpose):
        name, flag = stored_view(m.arg, batch)
        return name, not flag
    if not isinstance(m, sp.MatrixSymbol):
        raise TypeError(f"a product operand must be a named matrix, got {m}")
    return m.name, batch_major(m, batch)


def product(out: sp.MatrixSymbol, a: sp.MatrixExpr, b: sp.MatrixExpr, batch: sp.Symbol):
    """The stored operands of ``out = a·b``: ``(left, right)`` as ``(name, transpose)``."""
    left, right = stored_view(a, batch), stored_view(b, batch)
    if batch_major(out, batch):
        return (right[0], not right[1]), (left[0], not left[1])
    return left, right
