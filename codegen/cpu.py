"""Kernel IR → Numba ``@njit`` source: BLAS for products, fused loops for the rest.

Example:
    >>> import sympy as sp
    >>> from codegen.ir import MatMul, Program, Buffer
    >>> N = sp.Symbol("N")
    >>> p = Program("f", (MatMul("Z1", ("X", False), ("W1", True), "Z1 = W1*X"),),
    ...             ("X", "W1", "Z1"), (), {"X": Buffer("X", (N, 2))})
    >>> print(render_function(p).splitlines()[-2])
        np.dot(X, W1.T, Z1)
"""

from __future__ import annotations

import functools
import keyword

import sympy as sp

from codegen.blas import choice
from codegen.ir import CheckFinite, Loop, MatMul, OneHot, Program, Reduce, RowOp, RowSum
from codegen.printer import HELPERS, kernel_code
from codegen.schedule import plan_loop
from codegen.source import (
    INDENT,
    column_sum,
    comments,
    function,
    loop_statements,
    module_head,
    one_hot_row,
    return_line,
    row_body,
    size_bindings,
)


def _operand(operand) -> str:
    name, transposed = operand
    return f"{name}.T" if transposed else name


def _range(extent, parallel: bool) -> str:
    text = extent if isinstance(extent, str) else kernel_code(extent)
    return f"{'prange' if parallel else 'range'}({text})"


def _loop_header(space, parallel: bool) -> tuple[list[str], str]:
    if len(space) == 1:
        return [f"for i in {_range(space[0], parallel)}:"], INDENT
    return [f"for i in {_range(space[0], parallel)}:",
            f"{INDENT}for j in {_range(space[1], False)}:"], INDENT * 2


def _render_loop(op: Loop, parallel: bool) -> list[str]:
    plan = plan_loop(op)
    lines = comments(op.formulas)
    # Invariants in the arrays' own precision: `1 - beta1` is float64 in Numba (an int
    # minus a float32), and one float64 factor turns a whole float32 loop into float64.
    lines += [f"{s} = real({kernel_code(e)})" for s, e in plan.invariants]
    header, pad = _loop_header(op.space, parallel)
    return lines + header + loop_statements(plan, len(op.space) == 2, kernel_code, pad)


def _render_matmul(op: MatMul, parallel: bool, cblas: bool = False) -> list[str]:
    (a, ta), (b, tb) = op.a, op.b
    formula = comments(op.formula)
    if op.scale is not None:
        formula.append(f"# (one GEMM adds the scaled product into {op.out}: no gradient "
                       "buffer, no loop)")
    if cblas:
        alpha, beta = ("1", "0") if op.scale is None else (kernel_code(op.scale), "1")
        return [*formula, f"_gemm({a}, {ta}, {b}, {tb}, {op.out}, real({alpha}), real({beta}))"]
    if op.scale is None:
        return [*formula, f"np.dot({_operand(op.a)}, {_operand(op.b)}, {op.out})"]
    return [*formula, f"_gemm_add({a}, {ta}, {b}, {tb}, {op.out}, real({kernel_code(op.scale)}))"]


# C += alpha·op(A)·op(B) for row-major arrays, through the BLAS np.dot uses (SciPy's, via
# Numba's numba_xxgemm, so cache=True still works).  BLAS is column-major, where a
# row-major matrix reads as its transpose, so it is asked for Cᵀ += alpha·op(B)ᵀ·op(A)ᵀ.
GEMM_ADD = '''
import numba.np.linalg as _linalg
from numba import types as _types

_linalg._BLAS()  # binds numba_xxgemm to SciPy's BLAS, as np.dot does
_xxgemm = _types.ExternalFunction("numba_xxgemm", _types.intc(
    _types.char, _types.char, _types.char, _types.intp, _types.intp, _types.intp,
    _types.voidptr, _types.voidptr, _types.intp, _types.voidptr, _types.intp,
    _types.voidptr, _types.voidptr, _types.intp))
_KIND = ord("{kind}")


@njit(cache=True)
def _gemm_add(A, ta, B, tb, C, alpha):
    k = A.shape[0] if ta else A.shape[1]
    factors = np.empty(2, C.dtype)
    factors[0] = alpha
    factors[1] = 1.0
    _xxgemm(_KIND, ord("T") if tb else ord("N"), ord("T") if ta else ord("N"),
            C.shape[1], C.shape[0], k, factors[0:].ctypes.data, B.ctypes.data, B.shape[1],
            A.ctypes.data, A.shape[1], factors[1:].ctypes.data, C.ctypes.data, C.shape[1])
'''


# C = alpha·op(A)·op(B) + beta·C through NumPy's bundled OpenBLAS (codegen/blas.py), called by
# symbol name through CBLAS's row-major interface; every array here is C-contiguous.  A
# product with one row or one column (batch 1) goes to GEMV: that OpenBLAS's GEMM takes
# 33 µs for 1×784 · 784×128, its GEMV 6 µs.
CBLAS_GEMM = '''
from codegen.blas import load_gemm as _load_gemm

_cblas_gemm, _cblas_gemv = _load_gemm("{kind}")  # NumPy's bundled OpenBLAS (codegen/blas.py)
_SIZE = real(0).itemsize


@njit(cache=True)
def _gemm(A, ta, B, tb, C, alpha, beta):
    if A.itemsize != _SIZE or B.itemsize != _SIZE or C.itemsize != _SIZE:
        raise TypeError("_gemm: the arrays' dtype differs from the module's")
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    if m == 1 and k > 0:  # C's row = op(B)ᵀ · (op(A)'s row, contiguous)
        _cblas_gemv(101, 111 if tb else 112, B.shape[0], B.shape[1], alpha, B.ctypes.data,
                    B.shape[1], A.ctypes.data, 1, beta, C.ctypes.data, 1)
    elif n == 1 and k > 0:  # C's column = op(A) · (op(B)'s column, contiguous)
        _cblas_gemv(101, 112 if ta else 111, A.shape[0], A.shape[1], alpha, A.ctypes.data,
                    A.shape[1], B.ctypes.data, 1, beta, C.ctypes.data, 1)
    else:
        _cblas_gemm(101, 112 if ta else 111, 112 if tb else 111, m, n, k, alpha,
                    A.ctypes.data, max(1, A.shape[1]), B.ctypes.data, max(1, B.shape[1]),
                    beta, C.ctypes.data, max(1, n))
'''


def _render_rowsum(op: RowSum, parallel: bool) -> list[str]:
    if parallel:  # each output owns its sum: no race between threads
        return [f"# {op.formula}  (each output owns its sum: no race)",
                f"for j in {_range(op.out + '.shape[0]', True)}:",
                *(INDENT + line for line in column_sum(op))]
    # Serial: walk the rows in memory order, so the inner loop vectorises.
    return [f"# {op.formula}",
            f"{op.out}[:] = 0.0",
            f"for i in range({op.src}.shape[0]):",
            f"{INDENT}for j in range({op.out}.shape[0]):",
            f"{INDENT * 2}{op.out}[j] += {op.src}[i, j]"]


def _render_rowop(op: RowOp, parallel: bool) -> list[str]:
    return [*comments(op.formula), f"for i in {_range(op.out + '.shape[0]', parallel)}:",
            *(INDENT + line for line in row_body(op))]


def _render_reduce(op: Reduce, parallel: bool) -> list[str]:
    header, pad = _loop_header(op.space, parallel)
    lines = [f"# {op.formula}", f"total_{op.out} = 0.0"]
    if len(op.space) == 2:
        lines += [header[0], f"{INDENT}row = 0.0",
                  f"{INDENT}for j in range({kernel_code(op.space[1])}):",
                  f"{pad}row += {kernel_code(op.expr)}", f"{INDENT}total_{op.out} += row"]
    else:
        lines += [header[0], f"{pad}total_{op.out} += {kernel_code(op.expr)}"]
    lines.append(f"{op.out} = {kernel_code(op.scale)} * total_{op.out}")
    return lines


def _render_onehot(op: OneHot, parallel: bool) -> list[str]:
    return [f"# {op.out} = one_hot({op.indices})",
            f"for i in {_range(op.out + '.shape[0]', parallel)}:",
            *(INDENT + line for line in one_hot_row(op))]


def _render_check_finite(op: CheckFinite, parallel: bool) -> list[str]:
    names = ", ".join([op.value] * (op.value is not None) + [n for n, _ in op.arrays])
    lines = [f"# check_finite: no update unless {names} are finite",
             f"nonfinite = {op.value or 0.0} * 0.0"]
    lines += [f"nonfinite += _nonfinite({name})" for name, _ in op.arrays]
    return lines + ["if nonfinite != 0.0:", f"{INDENT}return {op.value or 0.0}, False"]


# v * 0 is 0 for finite v and NaN for NaN or ±Inf, so the sum is 0 exactly when every entry
# is finite.  Reassociation (its own function: inlining would drop the flag) lets the sum
# vectorise in the array's own type; NaN and Inf keep their IEEE meaning (no nnan/ninf).
NONFINITE = """
@njit(cache=True, fastmath={'reassoc'}, error_model='numpy')
def _nonfinite(a):
    flat = a.reshape(-1)
    zero = flat.dtype.type(0)
    acc = zero
    for k in range(flat.size):
        acc += flat[k] * zero
    return acc
"""


RENDERERS = {MatMul: _render_matmul, Loop: _render_loop, RowSum: _render_rowsum,
             RowOp: _render_rowop, Reduce: _render_reduce, OneHot: _render_onehot,
             CheckFinite: _render_check_finite}


def _identifiers(program: Program) -> None:
    """Every name printed as code must be an identifier: no name can smuggle in code."""
    names = [program.name, *program.arguments, *program.scalars]
    names += [s.name for op in program.ops for e in op.expressions for s in e.atoms(sp.Symbol)]
    bad = sorted({n for n in names if not (isinstance(n, str) and n.isidentifier()
                                            and not keyword.iskeyword(n))})
    if bad:
        raise ValueError(f"codegen: {bad} would be printed into generated code but "
                         "not a Python identifier; rename the symbol")


def _safe_line(line: str) -> str:
    """A comment keeps its text with line breaks and control characters escaped (it can't
    end early); code may not contain them at all."""
    if line.lstrip().startswith("#"):
        return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)
    if not line.isprintable():
        raise ValueError(f"codegen: generated line {line!r} contains a control character")
    return line


def render_function(program: Program, parallel: bool = False, cblas: bool = False) -> str:
    """The ``def`` of one program (without decorator); ``cblas``: products call ``_gemm``
    (NumPy's bundled OpenBLAS, `CBLAS_GEMM`) instead of ``np.dot``."""
    _identifiers(program)
    body = size_bindings(program)
    renderers = {**RENDERERS, MatMul: functools.partial(_render_matmul, cblas=cblas)}
    for op in program.ops:
        body += [_safe_line(line) for line in renderers[type(op)](op, parallel)]
    body.append(return_line(program, program.returns or "0.0"))
    return function(program.name, (*program.arguments, *program.scalars), body)


def render_module(programs: list[Program], batch: sp.Symbol, parallel: bool = False,
                  header: str = "", real: str = "float64", blas: str | None = None) -> str:
    """A whole module: imports, stable helpers, one ``@njit(cache=True)`` per program.

    ``real`` names the NumPy type of the arrays; loop invariants are computed in it.
    ``blas`` picks the products' library (`codegen.blas.choice`, the default):
    ``"numpy-openblas64"`` calls NumPy's bundled OpenBLAS, ``"scipy"`` uses ``np.dot``.
    ``batch`` is not read (the arrays' shapes give every size); callers still pass it.
    """
    blas = blas or choice()
    cblas = blas == "numpy-openblas64"
    kind = "s" if real == "float32" else "d"
    jit = f"njit(cache=True, parallel={parallel}, error_model='numpy')"
    parts = [*module_head(header), "import numpy as np",
             "from numba import njit, prange", "", f"real = np.{real}", "",
             HELPERS.format(jit="njit(cache=True, inline='always', error_model='numpy')")]
    products = [op for p in programs for op in p.ops if isinstance(op, MatMul)]
    if cblas and products:
        parts.append(CBLAS_GEMM.format(kind=kind))
    elif any(op.scale is not None for op in products):
        parts.append(GEMM_ADD.format(kind=kind))
    if any(p.guarded for p in programs):
        parts.append(NONFINITE)
    for program in programs:
        parts += ["", f"@{jit}", render_function(program, parallel, cblas), ""]
    return "\n".join(parts)
