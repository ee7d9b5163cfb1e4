"""How much of a large-batch train step is GEMM, and whose GEMM is faster.

The fused step's five products for 784-128-10 (Z1 = X·W1ᵀ, Z2 = A1·W2ᵀ, dW2 = dZ2ᵀ·A1,
dA1 = dZ2·W2, dW1 = dZ1ᵀ·X), timed alone, one thread each, medians: rendered by codegen as
a compiled step calls them, through each BLAS the CPU renderer can use (`codegen/blas.py`:
``np.dot`` inside ``@njit``, i.e. SciPy's OpenBLAS; and NumPy's bundled OpenBLAS by its
CBLAS symbols, what the step uses when it is there), and as PyTorch eager calls them
(``@`` on CPU tensors, MKL).  If the GEMMs alone take longer than a target step time, no
amount of fusion reaches that target.

Usage:
    .venv/bin/python benchmarks/gemm_share.py [--batches 32,256,4096]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # symnet and codegen, uninstalled

import time  # noqa: E402

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

from codegen import blas  # noqa: E402
from codegen.cache import load_module  # noqa: E402
from codegen.cpu import render_module  # noqa: E402
from codegen.ir import Buffer, MatMul, Program  # noqa: E402

N = sp.Symbol("N", integer=True, positive=True)
NAMES = ("X", "W1", "A1", "W2", "dZ2", "dZ1", "Z1", "Z2", "dW2", "dA1", "dW1")
SHAPES = {"X": (N, 784), "W1": (128, 784), "A1": (N, 128), "W2": (10, 128), "dZ2": (N, 10),
          "dZ1": (N, 128), "Z1": (N, 128), "Z2": (N, 10), "dW2": (10, 128), "dA1": (N, 128),
          "dW1": (128, 784)}
PRODUCTS = (MatMul("Z1", ("X", False), ("W1", True)),
            MatMul("Z2", ("A1", False), ("W2", True)),
            MatMul("dW2", ("dZ2", True), ("A1", False)),
            MatMul("dA1", ("dZ2", False), ("W2", False)),
            MatMul("dW1", ("dZ1", True), ("X", False)))


def products(library: str):
    """The five products as one compiled function, through ``library``'s BLAS."""
    program = Program("products", PRODUCTS, NAMES, (),
                      {n: Buffer(n, shape) for n, shape in SHAPES.items()})
    source = render_module([program], N, real="float32", blas=library)
    return load_module(source, {"benchmark": "gemm_share", "blas": library}).products


def _arrays(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal([batch if d == N else d for d in SHAPES[n]], dtype=np.float32)
            for n in NAMES]


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
    libraries = ["scipy"] + (["numpy-openblas64"] if blas.numpy_openblas() else [])
    compiled = {lib: products(lib) for lib in libraries}
    print(f"(the step uses: {blas.choice()})")
    print("| batch | SciPy's OpenBLAS (np.dot) | NumPy's OpenBLAS (cblas) | PyTorch → MKL | "
          "step's BLAS / MKL |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        arrays = _arrays(batch)
        reps = max(1, 20_000 // batch)
        times = {}
        for lib, f in compiled.items():
            f(*arrays)
            times[lib] = _median_ms(lambda f=f, a=arrays: f(*a), reps)
        cells = [f"{times[lib]:.3f} ms" if lib in times else "(not bundled)"
                 for lib in ("scipy", "numpy-openblas64")]
        if torch is None:
            print(f"| {batch} | {cells[0]} | {cells[1]} | (torch not installed) | |")
            continue
        X, W1, A1, W2, dZ2, dZ1 = (torch.from_numpy(a) for a in arrays[:6])

        def theirs(X=X, W1=W1, A1=A1, W2=W2, dZ2=dZ2, dZ1=dZ1):
            X @ W1.T, A1 @ W2.T, dZ2.T @ A1, dZ2 @ W2, dZ1.T @ X

        mkl = _median_ms(theirs, reps)
        print(f"| {batch} | {cells[0]} | {cells[1]} | {mkl:.3f} ms | "
              f"{times[blas.choice()] / mkl:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
