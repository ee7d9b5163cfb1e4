"""Which BLAS the CPU kernels call for their matrix products.

``np.dot`` inside ``@njit`` calls SciPy's BLAS (through Numba's ``numba_xxgemm``).  NumPy's
own wheels bundle a newer OpenBLAS (``scipy-openblas64``, ILP64, every symbol prefixed
``scipy_``): on this project's machine it runs the train step's products 8–10 % faster than
SciPy's (`benchmarks/gemm_share.py`), about as fast as PyTorch's MKL.  When that library is
found and exports ``cblas_?gemm``, generated kernels call it directly by symbol name, which
keeps ``cache=True`` working: the machine code names the symbol, never an address, and
`load_gemm` makes the symbol resolvable before any kernel is compiled or loaded.

``SYMNET_BLAS=scipy`` (or a NumPy without the bundled library: conda's, macOS Accelerate)
keeps ``np.dot``; ``SYMNET_BLAS=numpy`` insists on the bundled one and fails if it is missing.

Example:
    >>> choice() in ("numpy-openblas64", "scipy")
    True
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

ENV = "SYMNET_BLAS"
SYMBOL = "scipy_cblas_{kind}{op}64_"  # cblas_sgemm, cblas_dgemv ...: ILP64, NumPy's prefix


@functools.lru_cache(maxsize=1)
def numpy_openblas() -> str | None:
    """The path of NumPy's bundled OpenBLAS when it exports GEMM and GEMV in both
    precisions, else None."""
    root = Path(np.__file__).resolve().parent
    candidates = [*sorted(root.parent.glob("numpy.libs/*scipy_openblas64_*")),  # Linux, Windows
                  *sorted(root.glob(".dylibs/*scipy_openblas64_*"))]  # macOS
    for path in candidates:
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        if all(hasattr(library, SYMBOL.format(kind=k, op=op))
               for k in "sd" for op in ("gemm", "gemv")):
            return str(path)
    return None


def choice() -> str:
    """``"numpy-openblas64"`` when kernels call NumPy's bundled OpenBLAS, else ``"scipy"``."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "numpy", "scipy"):
        raise ValueError(f"{ENV}={wanted!r}: expected 'auto', 'numpy' or 'scipy'")
    if wanted == "scipy":
        return "scipy"
    if numpy_openblas() is not None:
        return "numpy-openblas64"
    if wanted == "numpy":
        raise RuntimeError(f"{ENV}=numpy, but this NumPy bundles no scipy-openblas64 library "
                           f"with cblas_sgemm/cblas_dgemm (NumPy {np.__version__} at "
                           f"{Path(np.__file__).parent})")
    return "scipy"


GEMM_ENV = "SYMNET_GEMM"


@functools.lru_cache(maxsize=1)
def avx512() -> bool:
    """Whether this CPU has AVX-512 (and FMA), which `codegen.gemm`'s tile needs."""
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return all(features.get(f, False) for f in ("avx512f", "fma"))


def gemm_choice() -> str:
    """``"symnet"`` when float32 kernels multiply large matrices with `codegen.gemm`
    (through `load_gemm`'s ``own``), else ``"openblas"``.

    ``SYMNET_GEMM=openblas`` keeps every product in OpenBLAS; ``SYMNET_GEMM=symnet``
    insists, and fails on a CPU without AVX-512; unset (``auto``) is ``"symnet"`` where the
    CPU has AVX-512 and NumPy bundles OpenBLAS (`choice`), which the small products use.
    """
    wanted = os.environ.get(GEMM_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "symnet", "openblas"):
        raise ValueError(f"{GEMM_ENV}={wanted!r}: expected 'auto', 'symnet' or 'openblas'")
    if wanted == "openblas":
        return "openblas"
    if avx512() and numpy_openblas() is not None:
        return "symnet"
    if wanted == "symnet":
        raise RuntimeError(f"{GEMM_ENV}=symnet, but this CPU has no AVX-512 (avx512f) or "
                           "NumPy bundles no OpenBLAS")
    return "openblas"


def _load_symbols() -> None:
    """Put NumPy's bundled OpenBLAS into LLVM's symbol table, so kernels compiled now or
    loaded from Numba's cache resolve its symbols by name."""
    from llvmlite import binding

    path = numpy_openblas()
    if path is None:
        raise RuntimeError("NumPy's bundled OpenBLAS was not found; render with blas='scipy'")
    binding.load_library_permanently(path)


def load_gemm(kind: str, own: bool = False):
    """Numba's handles on NumPy's bundled ``cblas_{kind}gemm`` and ``cblas_{kind}gemv``
    (``kind`` 's' or 'd').

    Loads the library into LLVM's symbol table first, so kernels compiled now or loaded
    from Numba's cache resolve the symbols.  ``own``: the GEMM is `codegen.gemm`'s entry
    point (float32 only, by the name `CBLAS_SYMBOL`), which calls symnet's own product for
    large matrices and this library's for small ones.
    """
    from numba import types

    _load_symbols()
    real = types.float32 if kind == "s" else types.float64
    enum, size, pointer = types.intc, types.int64, types.voidptr
    name = SYMBOL.format(kind=kind, op="gemm")
    if own:
        if kind != "s":
            raise ValueError("symnet's own GEMM is float32 only (kind 's')")
        import codegen.gemm  # noqa: F401  (registers CBLAS_SYMBOL)

        name = CBLAS_SYMBOL
    gemm = types.ExternalFunction(name, gemm_signature(real))
    gemv = types.ExternalFunction(SYMBOL.format(kind=kind, op="gemv"), types.void(
        enum, enum, size, size, real, pointer, size, pointer, size, real, pointer, size))
    return gemm, gemv


def gemm_signature(real):
    """CBLAS's ``?gemm`` in ILP64: order, transposes, m, n, k, alpha, A, lda, B, ldb, beta,
    C, ldc."""
    from numba import types

    enum, size, pointer = types.intc, types.int64, types.voidptr
    return types.void(enum, enum, enum, size, size, size, real, pointer, size, pointer, size,
                      real, pointer, size)


#: the name under which `codegen.gemm` registers its CBLAS-shaped float32 entry point
CBLAS_SYMBOL = "symnet_cblas_sgemm64"


THREADS_SYMBOL = "scipy_openblas_{op}_num_threads64_"  # NumPy's OpenBLAS thread count


@functools.lru_cache(maxsize=2)
def _threads_function(op: str):
    function = getattr(ctypes.CDLL(numpy_openblas()), THREADS_SYMBOL.format(op=op))
    function.restype, function.argtypes = ((ctypes.c_int, []) if op == "get"
                                           else (None, [ctypes.c_int]))
    return function


def get_threads() -> int | None:
    """The threads of NumPy's bundled OpenBLAS (None when NumPy has no such library)."""
    return None if numpy_openblas() is None else int(_threads_function("get")())


def set_threads(n: int) -> None:
    """Give NumPy's bundled OpenBLAS ``n`` threads (nothing when NumPy has no such library)."""
    if numpy_openblas() is not None:
        _threads_function("set")(int(n))


def load_threads():
    """Numba's handles on NumPy's bundled OpenBLAS thread count: ``(get, set)``, called by
    symbol name, as `load_gemm`'s products are."""
    from numba import types

    _load_symbols()
    return (types.ExternalFunction(THREADS_SYMBOL.format(op="get"), types.intc()),
            types.ExternalFunction(THREADS_SYMBOL.format(op="set"), types.void(types.intc)))
