"""Denormal floats in compiled steps: flushed to zero while a CPU step runs (its
``denormals="auto"``), and ``set_flush_denormal`` for every thread, as
``torch.set_flush_denormal`` does.

A network that fits its batch drives its gradients, and then Adam's moments, towards zero
through the denormal range (below 1.2e-38 in float32), where many x86 CPUs take a slow
path for every operation.  Training 784-128-10 with Adam on one sample
(`benchmarks/denormals.py`, one core of an Intel Xeon host), the loss reached 0 within 5,000
steps and each step then took about 490 µs instead of 93 µs.  XLA (JAX's compiler) flushes
denormals on the CPU by default, and so does a step from ``sn.compile`` on the CPU: the
kernel sets the flags in each thread it runs on and writes the thread's old mode back when
it is done (`codegen.flush`), so NumPy and the rest of the program keep IEEE arithmetic.
A denormal is below any value a float32 weight, gradient or Adam moment can move a
parameter by (Adam's step is lr·m̂/(√v̂ + ε), ε = 1e-8).

`set_flush_denormal` sets the two x86 MXCSR flags that do it (`codegen.fpenv`), FTZ
(results that would be denormal are 0) and DAZ (denormal inputs are read as 0), in the
calling thread and in every thread of Numba's pool, where threaded steps run.  It affects
all float32 and float64 arithmetic of those threads (NumPy's included), not x87 arithmetic,
and not OpenBLAS's own threads (a threaded step runs its products on Numba's).

Example:
    >>> import symnet as sn
    >>> import numpy as np
    >>> tiny = np.finfo(np.float32).tiny
    >>> if sn.set_flush_denormal(True):
    ...     print(float(np.float32(tiny) / np.float32(4)))
    ...     _ = sn.set_flush_denormal(False)
    ... else:
    ...     print(0.0)
    0.0
"""

from __future__ import annotations

import numpy as np

from codegen import fpenv

X86 = fpenv.X86  # whether this CPU has the flags

#: what ``sn.compile(..., denormals=)`` accepts
MODES = ("auto", "flush", "ieee")


def check_denormals(denormals) -> str:
    """``denormals`` must be one of `MODES`."""
    if not isinstance(denormals, str) or denormals not in MODES:
        raise ValueError(f"compile: denormals must be one of {', '.join(map(repr, MODES))}, "
                         f"got {denormals!r}")
    return denormals


def cpu_flushes(denormals: str) -> bool:
    """Whether a CPU step compiled with ``denormals`` flushes them while it runs: "auto"
    where the CPU has the flags, "flush" (an error elsewhere), never "ieee"."""
    check_denormals(denormals)
    if denormals == "flush" and not X86:
        raise ValueError("compile: denormals='flush' sets x86's FTZ and DAZ flags, which "
                         "this CPU does not have; use 'auto' or 'ieee'")
    return denormals != "ieee" and X86


def set_flush_denormal(mode: bool) -> bool:
    """Flush denormal floats to zero (``True``) or keep IEEE arithmetic (``False``, the
    default) in this thread and Numba's threads; returns whether this CPU supports it
    (x86-64), as ``torch.set_flush_denormal`` does.

    Example:
        >>> import symnet as sn
        >>> sn.set_flush_denormal(False) in (True, False)
        True
    """
    if not isinstance(mode, (bool, np.bool_)):
        raise ValueError(f"set_flush_denormal: mode must be True or False, got {mode!r}")
    return fpenv.set_flush(bool(mode))
