"""Kernel IR → Numba CUDA source: one ``@cuda.jit`` kernel per op and a host driver.

The driver is a plain Python function named after the program, with the CPU function's
parameters (device arrays, then scalars) plus one 1-element float64 device array per
reduction (``total_L``) and, with a finite check, its flag.  It launches the kernels in
order, with grids computed from the shapes, and copies only the reductions' totals (and
that flag) back.  Each `Kernel` records its parameters' kinds, which `signature` turns
into Numba types.
Mirrors `codegen.cpu` op by op:

- ``MatMul``: tiled shared-memory product; a transposed operand is read in place by
  index arithmetic (loads stay coalesced), never copied.
- ``Loop``: one thread per entry, registers for locals; loop invariants (``1 − β₁ᵗ``) are
  computed once on the host and passed in.
- ``RowSum``: one thread per output column, summing its column: no race, deterministic.
- ``RowOp``: one thread per stored row, max-subtracted as on the CPU.
- ``Reduce``: per-thread partials, a shared-memory tree per block, one ``atomic.add``
  per block into ``total``; the scale is applied on the host.
- ``CheckFinite``: one kernel over every entry of the checked arrays (and the value's
  ``total``); a thread that sees NaN or ±Inf stores 1 into a 1-element ``nonfinite`` flag.
  The driver reads the flag back (one extra tiny copy, only in a guarded program) and, when
  it is set, returns ``(value, False)`` without launching any later kernel.

Example:
    >>> import sympy as sp
    >>> from codegen.ir import MatMul, Program, Buffer
    >>> p = Program("f", (MatMul("C", ("A", True), ("B", False), "C = A.T*B"),),
    ...             ("A", "B", "C"), (), {n: Buffer(n, (3, 3)) for n in "ABC"})
    >>> "def matmul_tn(C, A, B):" in render_module([p], sp.Symbol("N"), "float32")
    True
    >>> [k.kinds for k in kernels(p, sp.Symbol("N"))]
    [('real[:, :]', 'real[:, :]', 'real[:, :]')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from codegen.ir import (
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
from codegen.printer import HELPERS, KernelPrinter
from codegen.schedule import plan_loop
from codegen.source import (
    INDENT,
    column_sum,
    comments,
    docstring_literal,
    function,
    function_lines,
    loop_statements,
    module_head,
    one_hot_row,
    return_line,
    row_body,
    size_bindings,
)

TILE = 16  # matmul tile edge: 16×16 = 256 threads per block

#: Builtins Numba's CUDA target cannot compile (``max``/``min`` are ``*args`` overloads
#: there: "Signature mismatch" in ``compile_ptx``), as two-operand device functions.
DEVICE_BUILTINS = {"max": "_max", "min": "_min"}
# numba-cuda 0.30.4 (in maintenance, unfixed: NVIDIA/numba-cuda#907) registers an overload of
# np.row_stack when it compiles its first kernel; NumPy 2.5 removed that alias of np.vstack, so
# every launch raised AttributeError.  The rendered module puts the alias back where missing.
NUMPY_COMPAT = '''
import numpy

if not hasattr(numpy, "row_stack"):  # NumPy >= 2.5 with numba-cuda <= 0.30.4
    numpy.row_stack = numpy.vstack
'''

BUILTIN_HELPERS = '''
@cuda.jit(device=True)
def _max(a, b):
    return a if a > b else b


@cuda.jit(device=True)
def _min(a, b):
    return a if a < b else b
'''
_BUILTIN_CALL = re.compile(r"\b(" + "|".join(DEVICE_BUILTINS) + r")\(")


def device_text(source: str) -> str:
    """Source shared with the CPU (helpers, row bodies) with ``max(`` → ``_max(``."""
    return _BUILTIN_CALL.sub(lambda m: DEVICE_BUILTINS[m.group(1)] + "(", source)


class CudaPrinter(KernelPrinter):
    """The shared kernel printer, with ``Max``/``Min`` as nested two-operand helpers."""

    def _fold(self, name: str, expr) -> str:
        args = [self._print(a) for a in expr.args]
        text = args[0]
        for a in args[1:]:
            text = f"{name}({text}, {a})"
        return text

    def _print_Max(self, expr):
        return self._fold(DEVICE_BUILTINS["max"], expr)

    def _print_Min(self, expr):
        return self._fold(DEVICE_BUILTINS["min"], expr)


_PRINTER = CudaPrinter()


def kernel_code(expr: sp.Expr) -> str:
    """Python source for a scalar expression inside a CUDA kernel."""
    return _PRINTER.doprint(expr)


HELPER_NAMES = frozenset(re.findall(r"def (\w+)\(", HELPERS + BUILTIN_HELPERS))

#: launch-size helpers, defined once at the top of every generated module
LAUNCH = '''
def _pow2(n, cap):
    """The smallest power of two ≥ n, at most cap: small arrays get small blocks."""
    size = 1
    while size < min(n, cap):
        size *= 2
    return size


def _line(n):
    """(grid, block) for one thread per item of n."""
    threads = _pow2(n, THREADS)
    return (n + threads - 1) // threads, threads


def _plane(rows, cols):
    """(grid, block) for one thread per entry; x runs along a stored row (coalesced)."""
    tx = _pow2(cols, 32)
    ty = _pow2(rows, THREADS // tx)
    return ((cols + tx - 1) // tx, (rows + ty - 1) // ty), (tx, ty)


def _tiles(C):
    """(grid, block) for the tiled product writing C: one block per TILE×TILE tile."""
    return ((C.shape[1] + TILE - 1) // TILE, (C.shape[0] + TILE - 1) // TILE), (TILE, TILE)
'''


#: A kernel parameter's kind → its Numba type, given Numba's ``types`` and the arrays' type.
PARAMETER_TYPES = {
    "real[:]": lambda types, real: types.Array(real, 1, "C"),
    "real[:, :]": lambda types, real: types.Array(real, 2, "C"),
    "int64[:]": lambda types, real: types.Array(types.int64, 1, "C"),  # one-hot indices
    "float64[:]": lambda types, real: types.Array(types.float64, 1, "C"),  # totals, the flag
    "real": lambda types, real: real,  # a real scalar or a host invariant (k0)
    "int64": lambda types, real: types.int64,  # a size or an integer scalar (a step count)
}
ARRAY = {1: "real[:]", 2: "real[:, :]"}  # an array of the arrays' type, by its dimensions
MATRIX, ACCUMULATOR = ARRAY[2], "float64[:]"


@dataclass(frozen=True)
class Kernel:
    """One ``@cuda.jit`` function: its name, parameters, body (``def`` included) and each
    parameter's kind (a key of `PARAMETER_TYPES`)."""

    name: str
    params: tuple[str, ...]
    lines: tuple[str, ...]
    kinds: tuple[str, ...]


@dataclass
class _Render:
    """What the renderers accumulate: kernels by name and the driver's lines; ``scalars``
    and ``sizes`` tell a kernel's scalar parameters apart (`scalar_kind`)."""

    kernels: dict[str, Kernel]
    scalars: dict[str, sp.Symbol] = field(default_factory=dict)
    sizes: frozenset[str] = frozenset()
    driver: list[str] = field(default_factory=list)
    returns: dict[str, str] = field(default_factory=dict)  # scalar → host expression

    def kernel(self, stem: str, params, kinds, body: list[str], doc: str) -> str:
        """Add a kernel named after ``stem`` (made unique) and return its name."""
        name, n = stem, 1
        while name in self.kernels:
            n += 1
            name = f"{stem}_{n}"
        if len(kinds) != len(params):
            raise ValueError(f"codegen.cuda: {name} has {len(params)} parameters but "
                             f"{len(kinds)} kinds")
        lines = function_lines(name, params, [docstring_literal(doc), *body])
        self.kernels[name] = Kernel(name, tuple(params), tuple(lines), tuple(kinds))
        return name

    def scalar_kind(self, name: str) -> str:
        """A program scalar by its symbol's assumptions; a size is an int; anything else
        (a loop invariant the driver computes) has the arrays' type."""
        if name in self.scalars:
            return "int64" if self.scalars[name].is_integer else "real"
        return "int64" if name in self.sizes else "real"


def _code(e) -> str:
    return e if isinstance(e, str) else kernel_code(e)


# --- products ------------------------------------------------------------------------------
def _tile_load(side: str, transposed: bool) -> list[str]:
    """Fill one shared tile; with a transpose, threads swap roles so reads stay coalesced.

    ``a_tile[r, k] = op(A)[row0 + r, k0 + k]`` and ``b_tile[k, c] = op(B)[k0 + k, col0 + c]``;
    threadIdx.x always walks the stored array's contiguous axis.
    """
    if side == "A":
        if transposed:  # op(A)[r, k] = A[k, r]
            return ["if row0 + tx < rows and k0 + ty < inner:",
                    f"{INDENT}a_tile[tx, ty] = A[k0 + ty, row0 + tx]",
                    "else:", f"{INDENT}a_tile[tx, ty] = 0"]
        return ["if row0 + ty < rows and k0 + tx < inner:",
                f"{INDENT}a_tile[ty, tx] = A[row0 + ty, k0 + tx]",
                "else:", f"{INDENT}a_tile[ty, tx] = 0"]
    if transposed:  # op(B)[k, c] = B[c, k]
        return ["if col0 + ty < cols and k0 + tx < inner:",
                f"{INDENT}b_tile[tx, ty] = B[col0 + ty, k0 + tx]",
                "else:", f"{INDENT}b_tile[tx, ty] = 0"]
    return ["if k0 + ty < inner and col0 + tx < cols:",
            f"{INDENT}b_tile[ty, tx] = B[k0 + ty, col0 + tx]",
            "else:", f"{INDENT}b_tile[ty, tx] = 0"]


def _matmul_kernel(ta: bool, tb: bool) -> tuple[list[str], str]:
    name = "matmul_" + ("t" if ta else "n") + ("t" if tb else "n")
    inner = "A.shape[0]" if ta else "A.shape[1]"
    loads = _tile_load("A", ta) + _tile_load("B", tb)
    body = [
        "# +1 column: a transposed store walks a column without shared-memory bank conflicts",
        "a_tile = cuda.shared.array((TILE, PADDED), DTYPE)",
        "b_tile = cuda.shared.array((TILE, PADDED), DTYPE)",
        "tx, ty = cuda.threadIdx.x, cuda.threadIdx.y",
        "row0, col0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE",
        f"rows, cols, inner = C.shape[0], C.shape[1], {inner}",
        "acc = DTYPE(0)",
        "for k0 in range(0, inner, TILE):",
        *(INDENT + line for line in loads),
        f"{INDENT}cuda.syncthreads()",
        f"{INDENT}for k in range(TILE):",
        f"{INDENT * 2}acc += a_tile[ty, k] * b_tile[k, tx]",
        f"{INDENT}cuda.syncthreads()  # before the next tile overwrites these",
        "if row0 + ty < rows and col0 + tx < cols:",
        f"{INDENT}C[row0 + ty, col0 + tx] = acc",
    ]
    return body, name


def _render_matmul(op: MatMul, r: _Render) -> None:
    (a, ta), (b, tb) = op.a, op.b
    body, name = _matmul_kernel(ta, tb)
    if name not in r.kernels:
        shown = f"C = {'Aᵀ' if ta else 'A'}·{'Bᵀ' if tb else 'B'}"
        r.kernel(name, ("C", "A", "B"), (MATRIX,) * 3, body,
                 f"{shown}, tiled through shared memory (transposes by index arithmetic).")
    r.driver += [f"# {op.formula}", f"{name}[_tiles({op.out})]({op.out}, {a}, {b})"]


# --- entry-wise loops ----------------------------------------------------------------------
def _arrays_and_scalars(exprs, skip: set[sp.Symbol]) -> tuple[dict[str, int], set[sp.Symbol]]:
    """Arrays (in order of first use, with how many indices read them) and scalar symbols
    the expressions read."""
    arrays: dict[str, int] = {}
    scalars: set[sp.Symbol] = set()
    for e in exprs:
        labels = set()
        for x in sorted(e.atoms(sp.Indexed), key=str):
            labels.add(x.base.label)
            arrays.setdefault(x.base.label.name, len(x.indices))
        scalars |= {s for s in e.free_symbols if isinstance(s, sp.Symbol)} - labels
    return arrays, scalars - skip - {I, J}


def _parameters(arrays: dict[str, int], scalars: set[sp.Symbol],
                r: _Render) -> tuple[list[str], list[str]]:
    """A kernel's array parameters, then its scalars by name, and their kinds."""
    names = sorted(str(s) for s in scalars)
    return [*arrays, *names], [*(ARRAY[n] for n in arrays.values()),
                               *(r.scalar_kind(n) for n in names)]


def _calls_helper(e: sp.Expr) -> bool:
    return any(f"{h}(" in kernel_code(e) for h in HELPER_NAMES)


def _render_loop(op: Loop, r: _Render) -> None:
    if op.totals:
        raise NotImplementedError("codegen.cuda: a loop's column totals "
                                  "(sum_columns_in_loops) are a CPU pass")
    # Device helpers (_sigmoid) cannot run on the host: such invariants go per thread.
    plan = plan_loop(op, per_entry=_calls_helper)
    two_d = len(op.space) == 2
    body = loop_statements(plan, two_d, kernel_code, INDENT)
    arrays, scalars = _arrays_and_scalars([e for _, e, _ in plan.statements], plan.defined)
    for target in op.stored:
        arrays.setdefault(target, len(op.space))
    extents = [_code(x) for x in op.space]
    scalars |= {x for x in op.space if isinstance(x, sp.Symbol)}
    params, kinds = _parameters(arrays, scalars, r)
    if two_d:
        head = ["j, i = cuda.grid(2)  # x along a stored row: neighbours read neighbours",
                f"if i < {extents[0]} and j < {extents[1]}:"]
    else:
        head = ["i = cuda.grid(1)", f"if i < {extents[0]}:"]
    name = r.kernel(f"loop_{(op.stored or (op.assigns[-1][0],))[-1]}", params, kinds,
                    comments(op.formulas) + head + body,
                    "One thread per entry; locals stay in registers.")
    launch = f"_plane({extents[0]}, {extents[1]})" if two_d else f"_line({extents[0]})"
    r.driver += comments(op.formulas)
    # In the arrays' dtype: a float64 scalar (1/N) would make the kernel compute in float64.
    r.driver += [f"{s} = DTYPE({kernel_code(e)})  # loop invariant, once per step"
                 for s, e in plan.invariants]
    r.driver.append(f"{name}[{launch}]({', '.join(params)})")


# --- sums over rows, per-row ops, reductions, one-hot -------------------------------------
def _render_rowsum(op: RowSum, r: _Render) -> None:
    body = [f"# {op.formula}", "j = cuda.grid(1)", f"if j < {op.out}.shape[0]:",
            *(INDENT + line for line in column_sum(op))]
    name = r.kernel(f"rowsum_{op.out}", (op.out, op.src), (ARRAY[1], MATRIX), body,
                    "One thread per output column owns its whole sum: no race.")
    r.driver += [f"# {op.formula}", f"{name}[_line({op.out}.shape[0])]({op.out}, {op.src})"]


def _render_rowreduce(op: RowReduce, r: _Render) -> None:
    arrays, scalars = _arrays_and_scalars([op.expr, op.scale], set())
    scalars |= {x for x in op.space if isinstance(x, sp.Symbol)}
    params, kinds = _parameters({op.out: 2, **arrays}, scalars, r)
    rows = _code(op.space[0])
    body = [f"# {op.formula}", "i = cuda.grid(1)", f"if i < {rows}:", f"{INDENT}row = 0.0",
            f"{INDENT}for j in range({_code(op.space[1])}):",
            f"{INDENT * 2}row += {kernel_code(op.expr)}",
            f"{INDENT}{op.out}[i, 0] = {kernel_code(op.scale)} * row"]
    name = r.kernel(f"rowreduce_{op.out}", params, kinds, body,
                    "One thread per stored row owns its whole total: no race.")
    r.driver += [f"# {op.formula}", f"{name}[_line({rows})]({', '.join(params)})"]


def _render_rowop(op: RowOp, r: _Render) -> None:
    formula = comments(op.formula)
    body = [*formula, "i = cuda.grid(1)", f"if i < {op.out}.shape[0]:",
            *(INDENT + device_text(line) for line in row_body(op))]
    params = (*op.outputs, *op.inputs)
    name = r.kernel(f"{op.kind}_{op.out}", params, (MATRIX,) * len(params), body,
                    "One thread per sample row; the row maximum is subtracted before exp.")
    r.driver += [*formula, f"{name}[_line({op.out}.shape[0])]({', '.join(params)})"]


def accumulators(program: Program) -> tuple[str, ...]:
    """The driver's trailing arguments: a 1-element float64 device array per reduction, and
    the finite check's flag (``nonfinite``) in a guarded program."""
    totals = tuple(f"total_{op.out}" for op in program.ops if isinstance(op, Reduce))
    return totals + (FLAG,) * program.guarded


def _clear(r: _Render) -> str:
    """The kernel that zeroes a 1-element accumulator (added once)."""
    if "_clear" not in r.kernels:
        r.kernel("_clear", ("total",), (ACCUMULATOR,), ["total[0] = 0.0"],
                 "Zero an accumulator on the device.")
    return "_clear"


def _render_reduce(op: Reduce, r: _Render) -> None:
    arrays, scalars = _arrays_and_scalars([op.expr], set())
    scalars |= {x for x in op.space if isinstance(x, sp.Symbol)}
    total = f"total_{op.out}"
    params, kinds = _parameters(arrays, scalars, r)
    params, kinds = [total, *params], [ACCUMULATOR, *kinds]
    rows = _code(op.space[0])
    per_thread = [f"if i < {rows}:"]
    if len(op.space) == 2:
        per_thread += [f"{INDENT}for j in range({_code(op.space[1])}):",
                       f"{INDENT * 2}partial += {kernel_code(op.expr)}"]
    else:
        per_thread += [f"{INDENT}partial += {kernel_code(op.expr)}"]
    body = [f"# {op.formula}  (the scale is applied on the host)",
            "block = cuda.shared.array(THREADS, ACCUMULATOR)",
            "i = cuda.grid(1)", "tid = cuda.threadIdx.x", "partial = 0.0", *per_thread,
            "block[tid] = partial", "cuda.syncthreads()",
            "half = cuda.blockDim.x // 2  # blocks are powers of two",
            "while half > 0:", f"{INDENT}if tid < half:",
            f"{INDENT * 2}block[tid] += block[tid + half]", f"{INDENT}cuda.syncthreads()",
            f"{INDENT}half //= 2", "if tid == 0:", f"{INDENT}cuda.atomic.add({total}, 0, block[0])"]
    name = r.kernel(f"reduce_{op.out}", params, kinds, body,
                    "Per-thread partial sums, a tree per block, one atomic add per block.")
    r.driver += [f"# {op.formula}", f"{_clear(r)}[1, 1]({total})",
                 f"{name}[_line({rows})]({', '.join(params)})"]
    r.returns[op.out] = f"{_code(op.scale)} * {total}.copy_to_host()[0]"


def _render_onehot(op: OneHot, r: _Render) -> None:
    body = ["i = cuda.grid(1)", f"if i < {op.out}.shape[0]:",
            *(INDENT + line for line in one_hot_row(op))]
    name = r.kernel(f"one_hot_{op.out}", (op.out, op.indices), (MATRIX, "int64[:]"), body,
                    f"{op.out} = one_hot({op.indices}): one thread per sample row.")
    r.driver += [f"# {op.out} = one_hot({op.indices})",
                 f"{name}[_line({op.out}.shape[0])]({op.out}, {op.indices})"]


# --- the finite check before the ops it guards ---------------------------------------------
FLAG = "nonfinite"  # 1-element float64 device array: 0.0, or 1.0 once something is not finite


def _render_check_finite(op: CheckFinite, r: _Render) -> None:
    # As in codegen.cpu, v * 0.0 is 0.0 for a finite v and NaN for NaN or ±Inf.  Every thread
    # that sees one stores the same 1.0, so the race is harmless and needs no atomic.  The
    # value is checked as its unscaled total (the scale, 1/N, keeps finite finite).
    total = f"total_{op.value}" if op.value in r.returns else None
    body = ["k = cuda.grid(1)", "bad = False"]
    if total is not None:
        body += [f"if k == 0 and {total}[0] * 0.0 != 0.0:", f"{INDENT}bad = True"]
    sizes = []
    for name, ndim in op.arrays:
        if ndim == 1:
            size, entry = f"{name}.shape[0]", f"{name}[k]"
        else:
            size = f"{name}.shape[0] * {name}.shape[1]"
            entry = f"{name}[k // {name}.shape[1], k % {name}.shape[1]]"
        body += [f"if k < {size} and {entry} * 0.0 != 0.0:", f"{INDENT}bad = True"]
        sizes.append(size)
    body += ["if bad:", f"{INDENT}{FLAG}[0] = 1.0"]
    params = (FLAG, *([total] if total else []), *(n for n, _ in op.arrays))
    kinds = (ACCUMULATOR, *([ACCUMULATOR] if total else []), *(ARRAY[d] for _, d in op.arrays))
    checked = ", ".join([op.value] * (total is not None) + [n for n, _ in op.arrays])
    name = r.kernel("check_finite", params, kinds, body,
                    f"Set {FLAG}[0] unless {checked} are finite: one thread per entry.")
    value = r.returns.get(op.value, "0.0")
    extent = f"max(1, {', '.join(sizes)})" if sizes else "1"
    r.driver += [f"# check_finite: no update unless {checked} are finite",
                 f"{_clear(r)}[1, 1]({FLAG})",
                 f"{name}[_line({extent})]({', '.join(params)})",
                 f"if {FLAG}.copy_to_host()[0] != 0.0:  # the one extra copy: a flag",
                 f"{INDENT}return {value}, False"]


RENDERERS = {MatMul: _render_matmul, Loop: _render_loop, RowSum: _render_rowsum,
             RowReduce: _render_rowreduce,
             RowOp: _render_rowop, Reduce: _render_reduce, OneHot: _render_onehot,
             CheckFinite: _render_check_finite}


# --- the module ----------------------------------------------------------------------------
def _scalar_symbols(program: Program) -> dict[str, sp.Symbol]:
    found = {s.name: s for op in program.ops for s in op.symbols}
    return {name: found.get(name, sp.Symbol(name)) for name in program.scalars}


def _sizes(program: Program) -> frozenset[str]:
    """The size symbols of the program's arrays (``N``): integers on the device."""
    return frozenset(x.name for b in program.buffers.values() for x in b.shape
                     if isinstance(x, sp.Symbol))


def render_program(program: Program,
                   known: dict[str, Kernel] | None = None) -> tuple[list[Kernel], str]:
    """The kernels of one program and the source of its host driver.

    ``known`` holds kernels already in the module (from earlier programs): names stay
    unique and the shared products are not repeated.
    """
    scalars = _scalar_symbols(program)
    r = _Render(dict(known or {}), scalars, _sizes(program))
    r.driver += size_bindings(program)
    for name, symbol in scalars.items():
        # One type per scalar, so a kernel compiles once (lr=1 and lr=0.1 alike).
        r.driver.append(f"{name} = {'int' if symbol.is_integer else 'float'}({name})")
    for op in program.ops:
        RENDERERS[type(op)](op, r)
    r.driver.append(return_line(program, r.returns[program.returns] if program.returns
                                else "0.0"))
    driver = function(program.name, (*program.arguments, *program.scalars,
                                     *accumulators(program)), r.driver)
    new = [k for name, k in r.kernels.items() if name not in (known or {})]
    return new, driver


def kernels(program: Program, batch: sp.Symbol) -> list[Kernel]:
    """The kernels `render_module` emits for ``program`` (for signatures and PTX checks);
    ``batch`` is not read."""
    return render_program(program)[0]


def signature(kernel: Kernel, program: Program, dtype) -> tuple:
    """Numba argument types of ``kernel`` as the driver launches it (for ``compile_ptx``):
    its parameters' kinds, looked up in `PARAMETER_TYPES`.  ``program`` is not read (the
    kernel carries its kinds); callers still pass it."""
    from numba import types

    real = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    return tuple(PARAMETER_TYPES[kind](types, real) for kind in kernel.kinds)


def render_module(programs: list[Program], batch: sp.Symbol, dtype, tile: int = TILE,
                  header: str = "") -> str:
    """A whole module: imports, launch helpers, device helpers, kernels, host drivers.

    ``batch`` is not read (the arrays' shapes give every size); callers still pass it.
    """
    dtype_name = np.dtype(dtype).name
    parts = [*module_head(header), "import numba",
             "from numba import cuda", NUMPY_COMPAT,
             f"DTYPE = numba.{dtype_name}  # the arrays' dtype (shared-memory tiles)",
             "ACCUMULATOR = numba.float64  # reductions add in float64, as on the CPU",
             f"TILE = {tile}", "PADDED = TILE + 1  # a global, so the tile's shape is a constant",
             "THREADS = 256  # most threads per 1-D block (a power of two)",
             LAUNCH, BUILTIN_HELPERS,
             device_text(HELPERS.format(jit="cuda.jit(device=True)"))]
    drivers, known = [], {}
    for program in programs:
        program_kernels, driver = render_program(program, known)
        for k in program_kernels:
            parts += ["", "@cuda.jit(cache=True)", "\n".join(k.lines), ""]
            known[k.name] = k
        drivers.append(driver)
    for driver in drivers:
        parts += ["", driver, ""]
    return "\n".join(parts)
