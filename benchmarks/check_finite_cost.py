"""What refusing a non-finite update costs: the fused step with and without ``check_finite``.

Usage:
    taskset -c 0 .venv/bin/python benchmarks/check_finite_cost.py [--rounds 31]

784-128-10 (ReLU, cross-entropy, float32) with SGD and Adam at batch 1 and 256.  For each
row the two steps train twin models in the same process, in interleaved blocks of k steps
(both see the same machine noise); the table gives the median µs per step of each and their
ratio.  The check is one compiled pass over the loss and every gradient; with SGD it also
keeps the weight gradient apart from the update (no fused β = 1 GEMM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_k, None)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from mlp import symnet_mlp, symnet_optimizer  # noqa: E402

import symnet as sn  # noqa: E402

SIZES = (784, 128, 10)


def _block(step, X, y, k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
        step(X, y)
    return (time.perf_counter() - start) / k * 1e6


def measure(optimizer: str, batch: int, rounds: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    X = rng.random((batch, SIZES[0]), np.float32)
    y = rng.integers(0, SIZES[-1], batch)
    steps = {}
    for checked in (False, True):
        model = symnet_mlp(SIZES)
        opt = symnet_optimizer(optimizer, model.parameters())
        steps[checked] = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=checked)
    k = max(1, 20000 // (batch * 20))
    times = {False: [], True: []}
    for _ in range(3):  # warm-up
        for step in steps.values():
            _block(step, X, y, k)
    for _ in range(rounds):
        for checked, step in steps.items():
            times[checked].append(_block(step, X, y, k))
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args()
    print("| optimizer | batch | unchecked µs | checked µs | checked / unchecked |")
    print("|---|---:|---:|---:|---:|")
    for optimizer in ("SGD", "Adam"):
        for batch in (1, 256):
            plain, checked = measure(optimizer, batch, args.rounds)
            print(f"| {optimizer} | {batch} | {plain:.1f} | {checked:.1f} | "
                  f"{checked / plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
