"""The floating-point environment of this thread and of Numba's threads: x86's MXCSR flags
that flush denormal floats to zero, FTZ (results that would be denormal are 0) and DAZ
(denormal inputs are read as 0).  symnet's ``sn.set_flush_denormal`` is the user's control
of every thread; a kernel rendered with ``flush=True`` (`codegen.flush`) sets them while it
runs, with `flush_on` and `restore`.

Example:
    >>> import numpy as np
    >>> if set_flush(True):
    ...     print(float(np.float32(np.finfo(np.float32).tiny) / np.float32(4)))
    ...     _ = set_flush(False)
    ... else:
    ...     print(0.0)
    0.0
"""

from __future__ import annotations

import platform

import numba
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags
FLUSH = 0x8000 | 0x0040
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _mxcsr_functions(builder):
    byte_pointer = ir.IntType(8).as_pointer()
    function = ir.FunctionType(ir.VoidType(), [byte_pointer])
    store = builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=function)
    load = builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=function)
    return store, load, byte_pointer


@intrinsic
def swap_mxcsr(typingctx, flags, on):
    """Set (``on``) or clear ``flags`` in this thread's MXCSR; return its old value."""
    sig = types.int32(types.int32, types.boolean)

    def codegen(context, builder, signature, args):
        flags_, on_ = args
        store, load, byte_pointer = _mxcsr_functions(builder)
        slot = builder.alloca(ir.IntType(32))
        builder.call(store, [builder.bitcast(slot, byte_pointer)])
        old = builder.load(slot)
        new = builder.select(on_, builder.or_(old, flags_), builder.and_(old, builder.not_(flags_)))
        builder.store(new, slot)
        builder.call(load, [builder.bitcast(slot, byte_pointer)])
        return old

    return sig, codegen


@intrinsic
def load_mxcsr(typingctx, value):
    """Write ``value`` (one `swap_mxcsr` returned) back into this thread's MXCSR."""
    sig = types.none(types.int32)

    def codegen(context, builder, signature, args):
        _, load, byte_pointer = _mxcsr_functions(builder)
        slot = builder.alloca(ir.IntType(32))
        builder.store(args[0], slot)
        builder.call(load, [builder.bitcast(slot, byte_pointer)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def flush_on():
    """Set FTZ and DAZ in this thread; return its old mode, for `restore` (a Numba
    function, so code run as plain Python, a kernel's ``py_func``, may call it too)."""
    return swap_mxcsr(FLUSH, True)


@njit(cache=True, inline="always")
def restore(mode):
    """Put back the mode `flush_on` returned."""
    load_mxcsr(mode)


@njit(cache=True)
def _here(on):
    return swap_mxcsr(FLUSH, on)


@njit(cache=True, parallel=True)
def _in_every_thread(on, threads):
    # one iteration a thread: Numba's static schedule gives each thread one chunk
    for _ in prange(threads):
        swap_mxcsr(FLUSH, on)


def set_flush(on: bool) -> bool:
    """Set (``on``) or clear FTZ and DAZ in the calling thread and in every thread of Numba's
    pool; returns False, changing nothing, where the CPU is not x86-64."""
    if not X86:
        return False
    _here(on)
    current, pool = numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(pool)
    try:
        _in_every_thread(on, pool)
    finally:
        numba.set_num_threads(current)
    return True
