"""Source text that both renderers print: the module's head, a function's frame (sizes from
the arrays, the return), the per-row bodies and a fused loop's statements.

`codegen.cpu` and `codegen.cuda` differ in how they wrap these (a ``prange`` loop, a kernel
with one thread per entry), never in the lines themselves; neither imports the other.

Example:
    >>> print(function("f", ("x",), ["y = x + 1", "return y"]))
    def f(x):
        y = x + 1
        return y
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import sympy as sp

from codegen.ir import OneHot, Program, RowOp, RowSum
from codegen.schedule import LoopPlan

INDENT = "    "


def docstring_literal(text: str) -> str:
    """``text`` as a module docstring that no backslash, quote or control character ends.

    Example:
        >>> print(docstring_literal('say "hi"\\x00'))
        \"\"\"say \\"hi\\"\\x00\"\"\"
    """
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"""' + "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1]
                           for c in text) + '"""'


def module_head(header: str) -> list[str]:
    """The first lines of a generated module: its docstring, if any, and ``import math``."""
    return [docstring_literal(header) if header else "", "import math", ""]


def comments(text: str | Iterable[str]) -> list[str]:
    """One ``# …`` line per line of ``text`` (a formula may span several)."""
    return [f"# {line}" for line in (text.splitlines() if isinstance(text, str) else text)]


def function_lines(name: str, params: Iterable[str], body: Iterable[str]) -> list[str]:
    """``def name(params):`` and the indented ``body``."""
    return [f"def {name}({', '.join(params)}):", *(INDENT + line for line in body)]


def function(name: str, params: Iterable[str], body: Iterable[str]) -> str:
    """`function_lines` as one text."""
    return "\n".join(function_lines(name, params, body))


def size_bindings(program: Program) -> list[str]:
    """``N = X.shape[0]``: each size symbol bound once, from the first argument that has it."""
    lines, bound = [], set()
    for name in program.arguments:
        for axis, extent in enumerate(getattr(program.buffers.get(name), "shape", ())):
            if isinstance(extent, sp.Symbol) and extent not in bound:
                lines.append(f"{extent} = {name}.shape[{axis}]")
                bound.add(extent)
    return lines


def before_returns(body: list[str], statement: str) -> list[str]:
    """``body`` with ``statement`` before each of its ``return`` lines, at their indent."""
    out = []
    for line in body:
        stripped = line.lstrip()
        if stripped == "return" or stripped.startswith("return "):
            out.append(line[:len(line) - len(stripped)] + statement)
        out.append(line)
    return out


def return_line(program: Program, result: str) -> str:
    """The function's last line: a guarded program also says whether it ran to the end."""
    return f"return {result}, True" if program.guarded else f"return {result}"


#: The body of a `RowOp` for one stored row ``i``, max-subtracted before ``exp``; ``{a}`` and
#: ``{b}`` are its inputs, ``{out}`` and ``{out2}`` its outputs.  The exponentials are summed
#: in the row's own type and the row is scaled by one reciprocal: a float64 sum (``0.0``)
#: and a division per entry made a float32 softmax of 4096×10 take 1.8× as long (267
#: against 146 µs, one core), for no accuracy a float32 softmax keeps.
ROW_BODIES = {
    "softmax": ["m = {a}[i, 0]", "for j in range(1, {a}.shape[1]):",
                "    m = max(m, {a}[i, j])", "s = {a}.dtype.type(0)",
                "for j in range({a}.shape[1]):", "    e = math.exp({a}[i, j] - m)",
                "    {out}[i, j] = e", "    s += e", "r = 1 / s",
                "for j in range({a}.shape[1]):", "    {out}[i, j] = {out}[i, j] * r"],
    "log_softmax": ["m = {a}[i, 0]", "for j in range(1, {a}.shape[1]):",
                    "    m = max(m, {a}[i, j])", "s = {a}.dtype.type(0)",
                    "for j in range({a}.shape[1]):", "    s += math.exp({a}[i, j] - m)",
                    "lse = m + math.log(s)",
                    "for j in range({a}.shape[1]):", "    {out}[i, j] = {a}[i, j] - lse"],
    "softmax_log_softmax": ["m = {a}[i, 0]", "for j in range(1, {a}.shape[1]):",
                            "    m = max(m, {a}[i, j])", "s = {a}.dtype.type(0)",
                            "for j in range({a}.shape[1]):", "    e = math.exp({a}[i, j] - m)",
                            "    {out}[i, j] = e", "    s += e", "lse = m + math.log(s)",
                            "r = 1 / s", "for j in range({a}.shape[1]):",
                            "    {out}[i, j] = {out}[i, j] * r",
                            "    {out2}[i, j] = {a}[i, j] - lse"],
    "softmax_vjp": ["s = 0.0", "for j in range({a}.shape[1]):", "    s += {a}[i, j] * {b}[i, j]",
                    "for j in range({a}.shape[1]):",
                    "    {out}[i, j] = {a}[i, j] * ({b}[i, j] - s)"],
    "log_softmax_vjp": ["s = 0.0", "for j in range({a}.shape[1]):", "    s += {b}[i, j]",
                        "for j in range({a}.shape[1]):",
                        "    {out}[i, j] = {b}[i, j] - math.exp({a}[i, j]) * s"],
}


def row_body(op: RowOp) -> list[str]:
    """`ROW_BODIES` for ``op``, with its arrays' names filled in."""
    names = dict(zip("ab", op.inputs), out=op.out, out2=op.out2)
    return [line.format(**names) for line in ROW_BODIES[op.kind]]


def column_sum(op: RowSum) -> list[str]:
    """Output ``j`` of a `RowSum`, summed whole by whoever owns it (a thread, a ``prange``
    iteration): no two write one entry."""
    return ["acc = 0.0", f"for i in range({op.src}.shape[0]):",
            f"{INDENT}acc += {op.src}[i, j]", f"{op.out}[j] = acc"]


def one_hot_row(op: OneHot) -> list[str]:
    """Row ``i`` of a `OneHot`: zeros, then a one at the row's index."""
    return [f"for j in range({op.out}.shape[1]):", f"{INDENT}{op.out}[i, j] = 0.0",
            f"{op.out}[i, {op.indices}[i]] = 1.0"]


def loop_statements(plan: LoopPlan, two_d: bool, code: Callable[[sp.Expr], str],
                    pad: str) -> list[str]:
    """The per-entry statements of a planned loop: each register, then its array's entry."""
    at = "i, j" if two_d else "i"
    lines = []
    for symbol, value, array in plan.statements:
        lines.append(f"{pad}{symbol} = {code(value)}")
        if array is not None:
            lines.append(f"{pad}{array}[{at}] = {symbol}")
    return lines
