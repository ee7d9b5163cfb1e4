"""How much of a large-batch train step is GEMM, and whose GEMM is faster.

The fused step's five products for 784-128-10 (Z1 = X·W1ᵀ, Z2 = A1·W2ᵀ, dW2 = dZ2ᵀ·A1,
dA1 = dZ2·W2, dW1 = dZ1ᵀ·X), timed alone: as the compiled step calls them (``np.dot``
inside ``@njit``, i.e. SciPy's OpenBLAS) and as PyTorch eager calls them (``@`` on CPU
tensors, MKL), one thread each, interleaved blocks, medians.  If the GEMMs alone take
longer than a target step time, no amount of fusion reaches that target.

Usage:
    .venv/bin/python benchmarks/gemm_share.py [--batches 32,256,4096]
"""

from __future__ import annotations

import argparse
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402


@njit
def _products(X, W1, A1, W2, dZ2, dZ1, Z1, Z2, dW2, dA1, dW1):
    np.dot(X, W1.T, Z1)
    np.dot(A1, W2.T, Z2)
    np.dot(dZ2.T, A1, dW2)
    np.dot(dZ2, W2, dA1)
    np.dot(dZ1.T, X, dW1)


def _arrays(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(batch, 784), (128, 784), (batch, 128), (10, 128), (batch, 10), (batch, 128)]
    inputs = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    outputs = [np.empty(s, np.float32) for s in
               [(batch, 128), (batch, 10), (10, 128), (batch, 128), (128, 784)]]
    return inputs + outputs


def _median_ms(fn, reps: int, blocks: int = 15) -> float:
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps)
    return float(np.median(times)) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="32,256,4096")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
    print("| batch | GEMMs, Numba → OpenBLAS | GEMMs, PyTorch → MKL | OpenBLAS / MKL |")
    print("|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        arrays = _arrays(batch)
        _products(*arrays)
        reps = max(1, 20_000 // batch)
        ours = _median_ms(lambda a=arrays: _products(*a), reps)
        if torch is None:
            print(f"| {batch} | {ours:.3f} ms | (torch not installed) | |")
            continue
        X, W1, A1, W2, dZ2, dZ1 = (torch.from_numpy(a) for a in arrays[:6])

        def theirs(X=X, W1=W1, A1=A1, W2=W2, dZ2=dZ2, dZ1=dZ1):
            X @ W1.T, A1 @ W2.T, dZ2.T @ A1, dZ2 @ W2, dZ1.T @ X

        mkl = _median_ms(theirs, reps)
        print(f"| {batch} | {ours:.3f} ms | {mkl:.3f} ms | {ours / mkl:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
