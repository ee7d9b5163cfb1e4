"""How deep a weight gradient's blocks go, and when its B panels are packed: the choices
behind `codegen.gemm.KC_PACKED`, `PACK_B_PANELS` and `KC_IN_PLACE`, measured (one core,
float32, µs, medians over interleaved rounds).

A weight gradient ``C += alpha·Aᵀ·B`` (dW = dZᵀ·X, A = dZ of m columns, B = X of n, the
batch k deep) runs in `codegen.gemm._by_panels_of_b`: A's panels packed once per block of
the batch, each panel of B meeting all of them.  Each shape is timed four ways, 768 or 256
deep, B's panels read where they lie or packed, with the caches warm (``hot``) and with
48 MiB written before each call (``cold``); the last column is the way `sgemm` picks on
this CPU, whose L1 data cache (`gemm.L1_BYTES`) decides whether it packs B at all
(`gemm.PACKS_B`).

Usage:
    taskset -c 0 .venv/bin/python benchmarks/gemm_blocks.py [--rounds 11]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

for _variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # see train_step.py
    os.environ.pop(_variable, None)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from gemm_shapes import flush_caches  # noqa: E402  (48 MiB written before a cold call)
from numba import njit  # noqa: E402

from codegen import gemm  # noqa: E402
from codegen.blas import avx512  # noqa: E402

#: (m, n, k): the benchmarked steps' weight gradients, and a few around the threshold
SHAPES = ((10, 128, 4096), (24, 128, 4096), (48, 784, 4096), (96, 128, 4096),
          (96, 784, 4096), (128, 128, 4096), (128, 784, 4096), (256, 256, 4096),
          (128, 784, 256), (512, 512, 256), (512, 784, 256))
WAYS = {"768 in place": (768, 1 << 30), "768 packed": (768, 0),
        "256 in place": (256, 1 << 30), "256 packed": (256, 0)}


@njit
def _product(a, b, c, depth, pack_from):
    m, n, k = c.shape[0], c.shape[1], a.shape[0]
    gemm.blocked_sgemm(True, False, m, n, k, -1e-3, a.ctypes.data, m, b.ctypes.data, n, 1.0,
                       c.ctypes.data, n, depth, gemm.NC_ROWS, pack_from)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    if not avx512():
        raise SystemExit("symnet's GEMM needs AVX-512; this CPU has none")
    rng = np.random.default_rng(0)
    evict = np.zeros(12 * 1024 * 1024, np.float32)
    print(f"L1 data cache: {gemm.L1_BYTES // 1024} KiB; packs B: {gemm.PACKS_B}\n")
    print(f"| m×n×k | cache | {' | '.join(WAYS)} | sgemm's way |")
    print("|---|---|" + "---:|" * len(WAYS) + "---|")
    for m, n, k in SHAPES:
        a = rng.random((k, m), dtype=np.float32)
        b = rng.random((k, n), dtype=np.float32)
        c = rng.random((m, n), dtype=np.float32)
        ours = gemm.KC_TRANSPOSED_A
        panels = min(gemm.A_BLOCK // (ours * 4 * gemm.MR), -(-m // gemm.MR))
        chosen = f"{ours} {'packed' if panels >= gemm.PACK_FROM else 'in place'}"
        for cold in (False, True):
            times = {way: [] for way in WAYS}
            for depth, pack_from in WAYS.values():  # compile, warm
                _product(a, b, c, depth, pack_from)
            for _ in range(args.rounds):
                for way, (depth, pack_from) in WAYS.items():
                    if cold:
                        flush_caches(evict)
                    start = time.perf_counter()
                    _product(a, b, c, depth, pack_from)
                    times[way].append((time.perf_counter() - start) * 1e6)
            cells = " | ".join(f"{statistics.median(t):,.1f}" for t in times.values())
            print(f"| {m}×{n}×{k} | {'cold' if cold else 'hot'} | {cells} | {chosen} |")


if __name__ == "__main__":
    main()
