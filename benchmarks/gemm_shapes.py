"""The train step's matrix products in symnet's own GEMM (codegen/gemm.py) against NumPy's
bundled OpenBLAS, one core, float32: µs and GFLOP/s per product, medians over rounds.

Each product is called from compiled code (as a kernel calls it) in rounds that alternate
the two libraries.  ``hot``: the operands stay in cache between calls; ``cold``: 48 MiB are
written before each call, as the rest of a train step evicts the operands.  The shapes are
those of `benchmarks/train_step.py`'s configurations (784-128-10 at batch 32, 256, 4096 and
784-512-512-10 at 256): Z = X·Wᵀ (NT), the input gradient dA = dZ·W (NN), the weight
gradient dW = dZᵀ·A (TN).

Usage:
    taskset -c 0 .venv/bin/python benchmarks/gemm_shapes.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # see train_step.py
    os.environ.pop(_variable, None)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from codegen.blas import avx512, load_gemm  # noqa: E402
from codegen.gemm import OWN_MIN, sgemm  # noqa: E402

_openblas = load_gemm("s")[0]


@njit
def _own(ta, tb, m, n, k, a, b, c, calls):
    for _ in range(calls):
        sgemm(ta, tb, m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
              0.0, c.ctypes.data, n)


@njit
def _blas(ta, tb, m, n, k, a, b, c, calls):
    for _ in range(calls):
        _openblas(101, 112 if ta else 111, 112 if tb else 111, m, n, k, np.float32(1.0),
                  a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], np.float32(0.0),
                  c.ctypes.data, n)


@njit
def flush_caches(buffer):
    """Write 48 MiB (a step's worth of other arrays) so that the next call starts cold."""
    for i in range(0, buffer.size, 16):
        buffer[i] += 1.0


def shapes():
    """(name, m, n, k, ta, tb) of every product in the benchmarked steps."""
    for batch in (32, 256, 4096):
        yield f"784-128-10 B{batch} Z1", batch, 128, 784, False, True
        yield f"784-128-10 B{batch} Z2", batch, 10, 128, False, True
        yield f"784-128-10 B{batch} dA1", batch, 128, 10, False, False
        yield f"784-128-10 B{batch} dW1", 128, 784, batch, True, False
        yield f"784-128-10 B{batch} dW2", 10, 128, batch, True, False
    for name, m, n, k, ta, tb in (("Z1", 256, 512, 784, False, True),
                                  ("Z2", 256, 512, 512, False, True),
                                  ("dA1", 256, 512, 512, False, False),
                                  ("dW2", 512, 512, 256, True, False),
                                  ("dW1", 512, 784, 256, True, False)):
        yield f"784-512-512-10 B256 {name}", m, n, k, ta, tb


def measure(m, n, k, ta, tb, rounds: int, cold: bool,
            evict: np.ndarray) -> tuple[float, float]:
    """Median µs of one product: (symnet's, OpenBLAS's)."""
    rng = np.random.default_rng(0)
    a = rng.random((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.random((n, k) if tb else (k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    calls = 1 if cold else max(3, int(2e8 / (m * n * k)))
    times = {_own: [], _blas: []}
    for function in times:  # compile, warm
        function(ta, tb, m, n, k, a, b, c, calls)
    for _ in range(rounds):
        for function, found in times.items():
            if cold:
                flush_caches(evict)
            start = time.perf_counter()
            function(ta, tb, m, n, k, a, b, c, calls)
            found.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times[_own]), statistics.median(times[_blas])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not avx512():
        sys.exit("this CPU has no AVX-512: symnet's GEMM is not used here")
    evict = np.ones(48 * 2**20 // 4, np.float32)
    print("| product | m×n×k | op | cache | OpenBLAS | symnet | symnet / OpenBLAS | used |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for name, m, n, k, ta, tb in shapes():
        flops = 2 * m * n * k
        used = "symnet" if m * n * k >= OWN_MIN else "OpenBLAS"
        for cold in (False, True):
            own, blas = measure(m, n, k, ta, tb, args.rounds, cold, evict)
            op = ("T" if ta else "N") + ("T" if tb else "N")
            print(f"| {name} | {m}×{n}×{k} | {op} | {'cold' if cold else 'hot'} "
                  f"| {blas:,.1f} µs ({flops / blas / 1e3:.0f} GF/s) "
                  f"| {own:,.1f} µs ({flops / own / 1e3:.0f} GF/s) | {own / blas:.2f} "
                  f"| {used} |", flush=True)


if __name__ == "__main__":
    main()
