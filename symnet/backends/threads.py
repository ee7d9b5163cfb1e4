"""How many threads a compiled CPU step uses, and the one control that sets them.

A step compiled with ``parallel="auto"`` (the default) runs on Numba's threads: its
entry-wise loops, row operations (softmax), reductions and optimizer updates above a
measured size, and its matrix products, split into one block per thread.  It uses
``min(Numba's threads, OpenBLAS's threads)``, read at every call, so the usual controls
hold: ``NUMBA_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` (set before Python starts), or
`set_num_threads`, which sets both at run time, as ``torch.set_num_threads`` does for
PyTorch.  (Numba's count is per Python thread, as ``numba.set_num_threads`` is.)

Example:
    >>> import symnet as sn
    >>> n = sn.get_num_threads()
    >>> sn.set_num_threads(1); sn.get_num_threads()
    1
    >>> sn.set_num_threads(n)
"""

from __future__ import annotations

import numbers

import numba

from codegen import blas


def set_num_threads(n: int) -> None:
    """Run compiled steps (and NumPy's bundled OpenBLAS) on ``n`` threads.

    ``n`` can be at most the thread pool Numba started with (``NUMBA_NUM_THREADS``, by
    default every core this process may use); a larger pool needs that variable set before
    Python starts.

    Example:
        >>> import symnet as sn
        >>> sn.set_num_threads(0)
        Traceback (most recent call last):
        ...
        ValueError: set_num_threads: n must be a positive integer, got 0
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    pool = numba.config.NUMBA_NUM_THREADS
    if n > pool:
        raise ValueError(f"set_num_threads({n}): Numba's thread pool has {pool} threads "
                         f"(NUMBA_NUM_THREADS, fixed when Numba starts); start Python with "
                         f"NUMBA_NUM_THREADS={n} for more")
    numba.set_num_threads(int(n))
    blas.set_threads(int(n))


def get_num_threads() -> int:
    """The threads a compiled step uses now: ``min(Numba's, OpenBLAS's)``."""
    threads, openblas = numba.get_num_threads(), blas.get_threads()
    return threads if openblas is None else min(threads, openblas)


def check_parallel(parallel) -> None:
    """``parallel`` must be ``"auto"``, ``True`` or ``False``."""
    if not (isinstance(parallel, bool) or parallel == "auto"):
        raise ValueError(f"compile: parallel={parallel!r}; expected 'auto' (threads for the "
                         f"work large enough to gain from them), True (every loop on the "
                         f"threads) or False (one thread)")
