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
import platform

import sympy as sp

from codegen import flush as flush_code
from codegen import fpenv
from codegen.blas import choice, gemm_choice
from codegen.ir import (
    CheckFinite,
    Loop,
    MatMul,
    OneHot,
    Program,
    Reduce,
    RowOp,
    RowReduce,
    RowSum,
)
from codegen.printer import HELPERS, kernel_code
from codegen.schedule import LoopPlan, plan_loop
from codegen.source import (
    INDENT,
    before_returns,
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
    if op.totals:
        return lines + _render_totals(op, plan, parallel)
    header, pad = _loop_header(op.space, parallel)
    return lines + header + loop_statements(plan, len(op.space) == 2, kernel_code, pad)


def _render_totals(op: Loop, plan: LoopPlan, parallel: bool) -> list[str]:
    """A loop with column totals: each row is computed, then added into the totals from
    where it was just stored (in L1).  Adding each entry as it is computed kept the loop
    from vectorising (4096×128, dZ1 and db1: 263 µs on 2 threads, against 153 µs this way
    and 214 µs for the loop and a separate column sum).  On the threads, each block of rows
    sums into its own partial row and the partials are added in block order (race-free, as
    a threaded `RowSum`); serially the sum runs in the separate sum's order, bit for bit."""
    rows, cols = (kernel_code(e) for e in op.space)
    body = loop_statements(plan, True, kernel_code, INDENT * (3 if parallel else 2))
    if not parallel:
        return [*(f"{out}[:] = 0.0" for out, _ in op.totals), f"for i in range({rows}):",
                f"{INDENT}for j in range({cols}):", *body, f"{INDENT}for j in range({cols}):",
                *(f"{INDENT * 2}{out}[j] += {src}[i, j]" for out, src in op.totals)]
    first = f"_parts_{op.totals[0][0]}"
    lines = [f"_parts_{out} = np.zeros((max(1, min(_nthreads, {rows})), {cols}), {out}.dtype)"
             for out, _ in op.totals]
    lines += [f"_rows = ({rows} + {first}.shape[0] - 1) // {first}.shape[0]",
              f"for _c in prange({first}.shape[0]):",
              f"{INDENT}for i in range(_c * _rows, min(_c * _rows + _rows, {rows})):",
              f"{INDENT * 2}for j in range({cols}):", *body,
              f"{INDENT * 2}for j in range({cols}):",
              *(f"{INDENT * 3}_parts_{out}[_c, j] += {src}[i, j]" for out, src in op.totals)]
    return lines + [f"_column_sum(_parts_{out}, 0, _parts_{out}.shape[0], {out})"
                    for out, _ in op.totals]


def _render_matmul(op: MatMul, parallel: bool, cblas: bool = False,
                   wide: bool = False) -> list[str]:
    (a, ta), (b, tb) = op.a, op.b
    formula = comments(op.formula)
    if op.scale is not None:
        formula.append(f"# (one GEMM adds the scaled product into {op.out}: no gradient "
                       "buffer, no loop)")
    if cblas:
        alpha, beta = ("1", "0") if op.scale is None else (kernel_code(op.scale), "1")
        call = f"({a}, {ta}, {b}, {tb}, {op.out}, real({alpha}), real({beta})"
        return [*formula, f"_gemm_wide{call}, _nthreads)" if wide else f"_gemm{call})"]
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
OPENBLAS = "# NumPy's bundled OpenBLAS (codegen/blas.py)"
OWN_GEMM = "# large float32 products: codegen/gemm.py; the rest: NumPy's bundled OpenBLAS"
CBLAS_GEMM = '''
from codegen.blas import load_gemm as _load_gemm

_cblas_gemm, _cblas_gemv = _load_gemm({gemm})  {gemm_comment}
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


# A parallel module's products run on Numba's threads, each block of rows (or columns) of C
# one single-threaded GEMM: two thread pools (OpenBLAS's and Numba's) spinning on the same
# cores made a 2-thread program 30× slower; one pool splits the products as well as
# OpenBLAS's own threads do (4096×784·784×128 and four smaller products: 4.18 ms, against
# 4.51 ms on OpenBLAS's threads).  Products under SPLIT_MIN multiply-adds, and GEMVs, stay whole.
CBLAS_WIDE = '''
SPLIT_MIN = 1 << 18


@njit(cache=True)
def _gemm_block(A, ta, B, tb, C, alpha, beta, r0, r1, c0, c1):
    """C[r0:r1, c0:c1] = alpha·op(A)[r0:r1, :]·op(B)[:, c0:c1] + beta·C[r0:r1, c0:c1]."""
    k = A.shape[0] if ta else A.shape[1]
    a = A.ctypes.data + (r0 if ta else r0 * A.shape[1]) * A.itemsize
    b = B.ctypes.data + (c0 * B.shape[1] if tb else c0) * B.itemsize
    c = C.ctypes.data + (r0 * C.shape[1] + c0) * C.itemsize
    _cblas_gemm(101, 112 if ta else 111, 112 if tb else 111, r1 - r0, c1 - c0, k, alpha,
                a, max(1, A.shape[1]), b, max(1, B.shape[1]), beta, c, max(1, C.shape[1]))


@njit(cache=True, parallel={parallel})
def _gemm_wide(A, ta, B, tb, C, alpha, beta, threads):
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    if threads < 2 or m == 1 or n == 1 or m * n * k < SPLIT_MIN:
        _gemm(A, ta, B, tb, C, alpha, beta)
{inner_split}    elif {rows_first}:
        rows = (m + threads - 1) // threads
        for t in prange(threads):
            if t * rows < m:
                _gemm_block(A, ta, B, tb, C, alpha, beta, t * rows, min(m, t * rows + rows),
                            0, n)
    else:
        cols = (n + threads - 1) // threads
        for t in prange(threads):
            if t * cols < n:
                _gemm_block(A, ta, B, tb, C, alpha, beta, 0, m, t * cols,
                            min(n, t * cols + cols))
'''


# With symnet's GEMM (codegen/gemm.py) a product splits by rows whenever each thread gets
# two rows of its 12-row tiles (the weight gradient 512×784 from a batch of 256: 578 µs by
# rows, 660 by columns, 2 threads), and a weight gradient of a batch at least 4·(m + n)
# splits the batch (the inner dimension) instead: each thread's partial product in its
# own buffer, added in thread order (128×784 from 4096: 2.09 ms, against 2.33 by columns;
# from a batch of 256 this split lost).
OWN_SPLIT = """    elif ta and k >= 4 * (m + n):
        _gemm_inner(A, B, tb, C, alpha, beta, threads)
"""
OWN_ROWS_FIRST = "m >= n or m >= 24 * threads"
OWN_INNER = '''

@njit(cache=True, parallel={parallel})
def _gemm_inner(A, B, tb, C, alpha, beta, threads):
    """C = alpha·Aᵀ·op(B) + beta·C, A's rows (the inner dimension) split over the threads."""
    m, n = C.shape
    k = A.shape[0]
    rows = (k + threads - 1) // threads
    parts = np.empty((threads - 1, m, n), C.dtype)  # beta 0: written, never read
    for t in prange(threads):
        k0 = min(k, t * rows)
        a = A.ctypes.data + k0 * A.shape[1] * A.itemsize
        b = B.ctypes.data + (k0 if tb else k0 * B.shape[1]) * B.itemsize
        c = C.ctypes.data if t == 0 else parts[t - 1].ctypes.data
        _cblas_gemm(101, 112, 112 if tb else 111, m, n, min(k, k0 + rows) - k0, alpha, a,
                    A.shape[1], b, B.shape[1], beta if t == 0 else real(0), c, n)
    for t in range(threads - 1):
        for i in prange(m):
            for j in range(n):
                C[i, j] += parts[t, i, j]
'''


def _render_rowsum(op: RowSum, parallel: bool) -> list[str]:
    if parallel:
        # Each block of rows sums into its own partial row, then the partials are added in
        # block order (`_column_sum` does both): no two threads write one entry, and every
        # read walks memory in order.
        src, out = op.src, op.out
        return [f"# {op.formula}  (row blocks sum into partial rows, then in order: no race)",
                f"parts = np.empty((max(1, min(_nthreads, {src}.shape[0])), "
                f"{out}.shape[0]), {out}.dtype)",
                f"rows = ({src}.shape[0] + parts.shape[0] - 1) // parts.shape[0]",
                "for c in prange(parts.shape[0]):",
                f"{INDENT}_column_sum({src}, c * rows, min(c * rows + rows, {src}.shape[0]), "
                "parts[c])",
                f"_column_sum(parts, 0, parts.shape[0], {out})"]
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


def _render_rowreduce(op: RowReduce, parallel: bool) -> list[str]:
    return [f"# {op.formula}",
            f"for i in {_range(op.space[0], parallel)}:",
            f"{INDENT}row = 0.0",
            f"{INDENT}for j in range({kernel_code(op.space[1])}):",
            f"{INDENT * 2}row += {kernel_code(op.expr)}",
            f"{INDENT}{op.out}[i, 0] = {kernel_code(op.scale)} * row"]


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


# The most terms per entry of a product that the train step sums inside the entry-wise loop
# reading it (`codegen.fusion.inline_thin_products`) rather than calling the GEMM.  Measured
# (one core, float32, N×k·k×128 read by a ReLU mask): alone, with its operands in cache,
# the summing loop took 0.60–0.96× the GEMM and loop's time at k = 4, 0.93–1.74× at 10
# (1.74× at batch 256: 10 µs against 6), 1.18–1.35× at 16, 1.4–1.8× at 24 and 32; inside
# the 784-128-10 step (dA1 = dZ2·W2, k = 10, five rounds of fresh processes) the whole
# step took 0.96× at batch 4096 (8.85 against 9.25 ms), 0.97–1.01× at 1 and 32 (an AMD
# Zen 5 host; `benchmarks/thin_products.py` repeats the first measurement).
THIN_PRODUCTS = 10


# What one entry of each kind of op costs, in halves of the cheapest loop's entry (a
# broadcast add and a max, vectorised), as benchmarks/parallel_threshold.py measured them on
# 2 threads: threads paid from 65,536–131,072 such entries, 16,384 of a three-array update
# with a division and a square root, and 1,024 of softmax rows (an exp per entry): each the
# size where the serial op takes about 3–8 µs, against 1.4–2.5 µs to start and join the
# threads.  `MIN_WORK` is the cautious first figure in those units.  Column sums (`RowSum`)
# on threads (partial rows) lost at every size in two of three runs, by up to 2.3×, so
# ``"auto"`` leaves them serial (cost 0); ``parallel=True`` still threads them.
ROW_COST = {"softmax": 256, "log_softmax": 256, "softmax_log_softmax": 256,
            "log_softmax_vjp": 256, "softmax_vjp": 16}
ROW_SUM_COST = 0
CHEAP_FUNCTIONS = (sp.Max, sp.Min, sp.Heaviside, sp.Abs, sp.sign, sp.Piecewise)


def entry_cost(exprs) -> int:
    """An entry-wise loop's cost per entry: 2, plus 3 per division or square root, plus 80
    per exp, log or any other function that is not a select (``Max``, ``Heaviside``)."""
    cost = 2
    for e in exprs:
        for node in sp.preorder_traversal(e):
            if isinstance(node, sp.Function) and not isinstance(node, CHEAP_FUNCTIONS):
                cost += 80
            elif isinstance(node, sp.Pow) and not (node.exp.is_Integer and node.exp > 0):
                cost += 3
    return cost


def work(op, buffers: dict) -> sp.Expr | None:
    """What ``op`` costs, in the batch symbol: entries times `entry_cost` (`ROW_COST` for
    rows, `ROW_SUM_COST` for column sums); what decides whether it is worth the threads
    (None: never a ``prange`` of its own; a product is split in `_gemm_wide`)."""
    if isinstance(op, Loop):
        return sp.Mul(*op.space) * entry_cost(e for _, e in op.assigns)
    if isinstance(op, (Reduce, RowReduce)):
        return sp.Mul(*op.space) * entry_cost([op.expr])
    if isinstance(op, RowOp):
        return sp.Mul(*buffers[op.out].shape) * ROW_COST[op.kind]
    if isinstance(op, OneHot):
        return sp.Mul(*buffers[op.out].shape) * 2
    if isinstance(op, RowSum):
        return sp.Mul(*buffers[op.src].shape) * ROW_SUM_COST
    return None


#: The fewest multiply-adds OpenBLAS runs on several threads (its GEMV threshold, 2304 × 4;
#: GEMM's is 65,536 × 4).  A program with such a product takes the threaded module, where
#: OpenBLAS has one thread: a serial module would wake OpenBLAS's own pool, whose workers
#: then spin for a while and starve Numba's (a threaded program run just after products on
#: OpenBLAS's threads took 3.5 ms instead of 30 µs a call for about 50 ms).
BLAS_THREADS_MIN = 2304 * 4


def product_size(op: MatMul, buffers: dict) -> sp.Expr:
    """The multiply-adds of a product: rows × columns of ``out`` × the shared dimension."""
    name, transposed = op.a
    k = buffers[name].shape[0 if transposed else 1]
    return sp.Mul(*buffers[op.out].shape) * k


def threads_from(program: Program, batch: sp.Symbol, min_work: int = 0,
                 product_min: int = BLAS_THREADS_MIN) -> int | None:
    """The smallest batch at which some op of ``program`` reaches ``min_work`` (`work`), or
    a product ``product_min`` multiply-adds: the first a threaded module is for (None: no
    batch up to 2³¹; sizes in other symbols, as in an update for any parameter shape, are
    not counted).

    Example:
        >>> import sympy as sp
        >>> from codegen.ir import Loop, Program
        >>> N, a = sp.Symbol("N"), sp.IndexedBase("a")
        >>> op = Loop((N, 128), (("b", a[sp.Symbol("i"), sp.Symbol("j")] + 1),))
        >>> threads_from(Program("f", (op,), ("a", "b"), ()), N, min_work=2560)
        10
    """
    sizes = [(e, min_work) for e in (work(op, program.buffers) for op in program.ops)
             if e is not None]
    sizes += [(product_size(op, program.buffers), product_min) for op in program.ops
              if isinstance(op, MatMul)]
    sizes = [(e, least) for e, least in sizes if e.free_symbols <= {batch}]
    if not sizes or min_work <= 0:
        return 1 if sizes else None

    def reached(n: int) -> bool:
        return any(int(e.subs(batch, n)) >= least for e, least in sizes)

    low, high = 1, 1 << 31
    if not reached(high):
        return None
    while low < high:  # every size grows with the batch: the first batch that reaches it
        middle = (low + high) // 2
        low, high = (low, middle) if reached(middle) else (middle + 1, high)
    return low


def _guarded(lines_for, size: sp.Expr | None, min_work: int | None) -> list[str]:
    """``op`` on the threads when its work reaches ``min_work`` and the program has more than
    one thread, else serially; ``min_work`` None: always serial, 0: always on the threads.

    Both versions are printed, unless the work is a number below ``min_work``; the lines
    they share (comments, loop invariants) once, first.
    """
    serial = lines_for(False)
    if size is None or min_work is None or (size.is_Integer and size < min_work):
        return serial
    wide = lines_for(True)
    if min_work == 0:
        return wide
    k = 0
    while k < min(len(serial), len(wide)) and serial[k] == wide[k]:
        k += 1
    test = "_nthreads > 1" if size.is_Integer else \
        f"_nthreads > 1 and {kernel_code(size)} >= MIN_WORK"
    return [*serial[:k], f"if {test}:", *(INDENT + line for line in wide[k:]),
            "else:", *(INDENT + line for line in serial[k:])]


#: The least `work` an op needs to run on several threads by default: 131,072 entries of a
#: broadcast add and a max (measured: benchmarks/parallel_threshold.py).
MIN_WORK = 2 * 131072

# A parallel module's threads: Numba's thread count, read inside kernels through the C
# symbol its threading layer binds (by name, as Numba's own parallel loops read it:
# numba.get_num_threads() compiled into a kernel is a pointer constant, which Numba refuses
# to cache), capped by OpenBLAS's.  While a kernel runs with more than one thread, OpenBLAS
# has one: the products are split over Numba's threads instead (`CBLAS_WIDE`).
THREADS = """
from numba import get_num_threads as _start_threads, types as _types

_start_threads()  # starts Numba's threading layer, which binds the symbol get_num_threads
_threads = _types.ExternalFunction("get_num_threads", _types.intp())
MIN_WORK = {min_work}
"""

COLUMN_SUM = """

@njit(cache=True)
def _column_sum(src, start, stop, out):
    out[:] = 0.0
    for i in range(start, stop):
        for j in range(out.shape[0]):
            out[j] += src[i, j]
"""

THREADS_CBLAS = """
from codegen.blas import load_threads as _load_threads

_blas_threads, _set_blas_threads = _load_threads()


@njit(cache=True)
def _share_threads():
    threads = min(_threads(), _blas_threads())
    saved = _blas_threads()
    if threads > 1:
        _set_blas_threads(1)
    return threads, saved


@njit(cache=True)
def _give_back(threads, saved):
    if threads > 1:
        _set_blas_threads(saved)
"""

THREADS_NUMBA = """

@njit(cache=True)
def _share_threads():
    return _threads(), 0


@njit(cache=True)
def _give_back(threads, saved):
    return None
"""

#: Numba's parallel options: only the loops printed as ``prange`` run on threads (an array
#: assignment such as ``db[:] = 0.0`` would otherwise become a parallel region of its own).
PARALLEL = ("{'prange': True, 'comprehension': False, 'reduction': False, "
            "'inplace_binop': False, 'setitem': False, 'numpy': False, 'stencil': False, "
            "'fusion': False}")


RENDERERS = {MatMul: _render_matmul, Loop: _render_loop, RowSum: _render_rowsum,
             RowOp: _render_rowop, Reduce: _render_reduce, OneHot: _render_onehot,
             CheckFinite: _render_check_finite, RowReduce: _render_rowreduce}


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


def render_function(program: Program, min_work: int | None = None,
                    cblas: bool = False, flush: bool = False) -> str:
    """The ``def`` of one program (without decorator); ``min_work``: see `_guarded`;
    ``cblas``: products call ``_gemm`` (NumPy's bundled OpenBLAS, `CBLAS_GEMM`) instead of
    ``np.dot``; ``flush``: denormals are flushed to zero while it runs (`codegen.flush`)."""
    _identifiers(program)
    wide = min_work is not None
    body = size_bindings(program)
    if wide:
        body.append("_nthreads, _blas_saved = _share_threads()")
    renderers = {**RENDERERS,
                 MatMul: functools.partial(_render_matmul, cblas=cblas, wide=wide)}
    for op in program.ops:
        lines = _guarded(functools.partial(renderers[type(op)], op),
                         work(op, program.buffers), min_work)
        body += [_safe_line(line) for line in lines]
    body.append(return_line(program, program.returns or "0.0"))
    if wide:  # OpenBLAS gets its threads back before every return
        body = before_returns(body, "_give_back(_nthreads, _blas_saved)")
    if flush:
        body = flush_code.scoped(flush_code.chunked(body, "_nthreads"))
    return function(program.name, (*program.arguments, *program.scalars), body)


def render_module(programs: list[Program], batch: sp.Symbol, parallel: bool = False,
                  header: str = "", real: str = "float64", blas: str | None = None,
                  min_work: int = MIN_WORK, flush: bool = False) -> str:
    """A whole module: imports, stable helpers, one ``@njit(cache=True)`` per program.

    ``parallel``: the entry-wise loops, row operations and reductions of at least
    ``min_work`` entries run on Numba's threads (``prange``), smaller ones serially; with
    ``min_work=0`` every one of them does.  Products run on BLAS's own threads either way.

    ``real`` names the NumPy type of the arrays; loop invariants are computed in it.
    ``blas`` picks the products' library (`codegen.blas.choice`, the default):
    ``"numpy-openblas64"`` calls NumPy's bundled OpenBLAS, ``"scipy"`` uses ``np.dot``.
    ``batch`` is not read (the arrays' shapes give every size); callers still pass it.
    ``flush``: each program flushes denormals to zero in every thread it runs on, and
    leaves their floating-point mode as it found it (`codegen.flush`; x86-64 only).
    """
    if flush and not fpenv.X86:
        raise ValueError("codegen: flush=True sets x86's MXCSR flags; this CPU is "
                         f"{platform.machine()!r}")
    blas = blas or choice()

    def templated(text: str) -> str:  # a template's threaded loops, flushing where asked
        return "\n".join(flush_code.chunked(text.split("\n"), "threads")) if flush else text

    cblas = blas == "numpy-openblas64"
    kind = "s" if real == "float32" else "d"
    jit = "njit(cache=True, parallel={}, error_model='numpy')"
    parts = [*module_head(header), "import numpy as np",
             "from numba import njit, prange", "", f"real = np.{real}", "",
             HELPERS.format(jit="njit(cache=True, inline='always', error_model='numpy')"),
             *([flush_code.IMPORT, ""] if flush else [])]
    if parallel:
        parts += [THREADS.format(min_work=int(min_work)),
                  THREADS_CBLAS if cblas else THREADS_NUMBA, COLUMN_SUM]
    products = [op for p in programs for op in p.ops if isinstance(op, MatMul)]
    if cblas and products:
        own = kind == "s" and gemm_choice() == "symnet"
        parts.append(CBLAS_GEMM.format(gemm='"s", own=True' if own else f'"{kind}"',
                                       gemm_comment=OWN_GEMM if own else OPENBLAS))
        if parallel:
            parts.append(templated(CBLAS_WIDE.format(
                parallel=PARALLEL, inner_split=OWN_SPLIT if own else "",
                rows_first=OWN_ROWS_FIRST if own else "m >= n")))
            if own:
                parts.append(templated(OWN_INNER.format(parallel=PARALLEL)))
    elif any(op.scale is not None for op in products):
        parts.append(GEMM_ADD.format(kind=kind))
    if any(p.guarded for p in programs):
        parts.append(NONFINITE)
    for program in programs:
        text = render_function(program, min_work if parallel else None, cblas, flush)
        threaded = PARALLEL if "prange(" in text else False  # else Numba warns: no loop
        parts += ["", f"@{jit.format(threaded)}", text, ""]
    return "\n".join(parts)
