"""Flush denormal floats to zero in compiled steps, as ``torch.set_flush_denormal`` does.

A network that fits its batch drives its gradients, and then Adam's moments, towards zero
through the denormal range (below 1.2e-38 in float32), where many x86 CPUs take a slow
path for every operation.  Training 784-128-10 with Adam on one sample
(`benchmarks/denormals.py`, one core of an Intel Xeon host), the loss reached 0 within 5,000
steps and each step then took about 490 µs instead of 93 µs.  XLA (JAX's compiler) flushes
denormals on the CPU by default; symnet, NumPy and PyTorch keep IEEE arithmetic unless told.

`set_flush_denormal` sets the two x86 MXCSR flags that do it, FTZ (results that would be
denormal are 0) and DAZ (denormal inputs are read as 0), in the calling thread and in every
thread of Numba's pool, where threaded steps run.  It affects all float32 and float64
arithmetic of those threads (NumPy's included), not x87 arithmetic, and not OpenBLAS's own
threads (a threaded step runs its products on Numba's).

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

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags
FLUSH = 0x8000 | 0x0040
X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def _swap_mxcsr(typingctx, flags, on):
    """Set (``on``) or clear ``flags`` in this thread's MXCSR; return its old value."""
    sig = types.int32(types.int32, types.boolean)

    def codegen(context, builder, signature, args):
        flags_, on_ = args
        byte_pointer = ir.IntType(8).as_pointer()
        function = ir.FunctionType(ir.VoidType(), [byte_pointer])
        store = builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=function)
        load = builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=function)
        slot = builder.alloca(ir.IntType(32))
        builder.call(store, [builder.bitcast(slot, byte_pointer)])
        old = builder.load(slot)
        new = builder.select(on_, builder.or_(old, flags_), builder.and_(old, builder.not_(flags_)))
        builder.store(new, slot)
        builder.call(load, [builder.bitcast(slot, byte_pointer)])
        return old

    return sig, codegen


@njit(cache=True)
def _here(on):
    return _swap_mxcsr(FLUSH, on)


@njit(cache=True, parallel=True)
def _in_every_thread(on, threads):
    # one iteration a thread: Numba's static schedule gives each thread one chunk
    for _ in prange(threads):
        _swap_mxcsr(FLUSH, on)


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
    if not X86:
        return False
    mode = bool(mode)
    _here(mode)
    current, pool = numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(pool)
    try:
        _in_every_thread(mode, pool)
    finally:
        numba.set_num_threads(current)
    return True
