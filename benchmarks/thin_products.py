"""When a thin product is worth summing inside the loop that reads it: the measurement behind
`codegen.cpu.THIN_PRODUCTS` (one core, float32, µs per call, medians over interleaved rounds).

``G = A·B`` (N×k times k×128) read only by ``Z = G ⊙ [H > 0]`` (dZ1 = dA1 ⊙ H(Z1), with k
classes), rendered by `codegen.cpu` both ways: a GEMM call and its loop, and the one loop
that sums the k terms per entry (`codegen.fusion.inline_thin_products`).  The operands stay
in cache between calls; the last column is the ratio, below 1 where summing in the loop
wins.

Usage:
    taskset -c 0 .venv/bin/python benchmarks/thin_products.py [--rounds 9]
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
import sympy as sp  # noqa: E402

from codegen.cache import load_module  # noqa: E402
from codegen.cpu import THIN_PRODUCTS, render_module  # noqa: E402
from codegen.fusion import inline_thin_products  # noqa: E402
from codegen.ir import Buffer, I, J, Loop, MatMul, Program  # noqa: E402

N = sp.Symbol("N", integer=True, positive=True)
COLUMNS = 128


def _program(k: int, inline: bool) -> Program:
    G, H = sp.IndexedBase("G"), sp.IndexedBase("H")
    buffers = {"A": Buffer("A", (N, k)), "B": Buffer("B", (k, COLUMNS)),
               "G": Buffer("G", (N, COLUMNS)), "H": Buffer("H", (N, COLUMNS)),
               "Z": Buffer("Z", (N, COLUMNS))}
    ops = (MatMul("G", ("A", False), ("B", False), "G = A*B"),
           Loop((N, COLUMNS), (("Z", G[I, J] * sp.Heaviside(H[I, J], 0)),),
                formulas=("Z = G*Heaviside(H)",)))
    if inline:
        ops = inline_thin_products(ops, {"Z"}, buffers, k)
    return Program("step", ops, ("A", "B", "G", "H", "Z"), (), buffers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"(codegen.cpu.THIN_PRODUCTS = {THIN_PRODUCTS})\n")
    print("| N | k | product + loop | summed in the loop | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for rows in (32, 256, 4096):
        for k in (4, 10, 16, 24, 32):
            steps = {}
            for inline in (False, True):
                source = render_module([_program(k, inline)], N, real="float32")
                steps[inline] = load_module(source, {"benchmark": "thin", "k": k,
                                                     "inline": inline}).step
            A = rng.standard_normal((rows, k), dtype=np.float32)
            B = rng.standard_normal((k, COLUMNS), dtype=np.float32)
            G, H, Z = (np.empty((rows, COLUMNS), np.float32) for _ in range(3))
            H[:] = rng.standard_normal(H.shape)
            calls = max(3, 2_000_000 // (rows * COLUMNS))
            times = {inline: [] for inline in steps}
            for step in steps.values():  # compile, warm
                step(A, B, G, H, Z)
            for _ in range(args.rounds):
                for inline, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        step(A, B, G, H, Z)
                    times[inline].append((time.perf_counter() - start) / calls * 1e6)
            apart, inside = (statistics.median(times[x]) for x in (False, True))
            print(f"| {rows:,} | {k} | {apart:,.2f} µs | {inside:,.2f} µs | "
                  f"{inside / apart:.2f} |")


if __name__ == "__main__":
    main()
