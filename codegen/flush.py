"""Kernels that flush denormal floats to zero while they run, and leave every thread's
floating-point mode as they found it.

A network that fits its batch drives its gradients, and then Adam's moments, through the
denormal range (below 1.2e-38 in float32), where many x86 CPUs take a slow path for every
operation (784-128-10 Adam on one sample, one core of an Intel Xeon: 5–8× slower steps,
`benchmarks/denormals.py`).  XLA flushes them in its threads by default; a
kernel rendered with ``flush=True`` (`codegen.cpu.render_module`) does so for itself:

- its first line sets FTZ and DAZ in the calling thread (`codegen.fpenv.flush_on`), and
  the thread's old mode is written back before each ``return``;
- each threaded loop runs as one chunk per thread that does the same in the thread running
  it (`chunked`), so a value is flushed on whichever thread computes it, and Numba's
  threads are back in their old mode when the loop ends.  Two MXCSR writes a chunk: nothing
  beside a chunk's work.

Example:
    >>> print("\\n".join(chunked(["for i in prange(n):", "    a[i] = 0.0"], "threads")))
    _per_0 = max(1, (n + threads - 1) // threads)
    for _chunk_0 in prange((n + _per_0 - 1) // _per_0):
        _mode_0 = _flush_on()
        for i in range(_chunk_0 * _per_0, min(n, _chunk_0 * _per_0 + _per_0)):
            a[i] = 0.0
        _restore(_mode_0)
"""

from __future__ import annotations

import re

from codegen.source import INDENT, before_returns

#: what a flushing module imports
IMPORT = "from codegen.fpenv import flush_on as _flush_on, restore as _restore"

_PRANGE = re.compile(r"^( *)for (\w+) in prange\((.*)\):$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def chunked(lines: list[str], threads: str) -> list[str]:
    """``lines`` with each ``for v in prange(n):`` loop split into at most ``threads``
    chunks of consecutive ``v`` (the split Numba's static schedule makes), each setting FTZ
    and DAZ in its thread before its iterations and writing the thread's old mode back
    after them.  ``threads`` is the code of the kernel's thread count."""
    out: list[str] = []
    k = tag = 0
    while k < len(lines):
        found = _PRANGE.match(lines[k])
        if found is None:
            out.append(lines[k])
            k += 1
            continue
        pad, var, extent = found.groups()
        end = k + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > len(pad)):
            end += 1
        n = extent if extent.isidentifier() or extent.isdigit() else f"({extent})"
        per, chunk, mode = f"_per_{tag}", f"_chunk_{tag}", f"_mode_{tag}"
        inner = pad + INDENT
        out += [f"{pad}{per} = max(1, ({n} + {threads} - 1) // {threads})",
                f"{pad}for {chunk} in prange(({n} + {per} - 1) // {per}):",
                f"{inner}{mode} = _flush_on()",
                f"{inner}for {var} in range({chunk} * {per}, min({n}, {chunk} * {per} + {per})):",
                *(INDENT + line for line in lines[k + 1:end]),
                f"{inner}_restore({mode})"]
        k, tag = end, tag + 1
    return out


def scoped(body: list[str]) -> list[str]:
    """A function's ``body`` that sets FTZ and DAZ in its thread first and writes the
    thread's old mode back before each ``return`` (and at the end)."""
    out = before_returns(["_fp_mode = _flush_on()", *body], "_restore(_fp_mode)")
    if not body or not body[-1].startswith("return"):
        out.append("_restore(_fp_mode)")
    return out
