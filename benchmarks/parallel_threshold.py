"""Where threads start to pay: each kind of loop a train step runs, serial against ``prange``.

Usage:
    .venv/bin/python benchmarks/parallel_threshold.py            # every thread Numba has
    .venv/bin/python benchmarks/parallel_threshold.py --rounds 5 --json out.json

`codegen.cpu` renders each kind of op twice, as it renders them in a train step: serially,
and on the threads (``parallel=True, min_work=0``).  The kinds: the cheapest entry-wise loop
(bias add and ReLU, ``A = max(0, Z + b)``), the costliest (Adam's update of a weight:
three arrays read, three written, a square root and a division per entry), softmax and
log-softmax rows (10 columns, an ``exp`` per entry), and a bias gradient (the column sums
of ``dZ``, race-free partial rows).  Each is timed, float32, on ``rows × 128`` entries (10
columns for softmax) from 2⁹ to 2²⁰ entries: median of interleaved blocks, over rounds;
each block starts with one untimed call, since a thread left idle for a while sleeps and
waking it costs 50 µs to milliseconds on a VM, which a step's back-to-back loops never pay.
The crossover is the smallest size from which the threaded loop is faster at every larger
size; `codegen.cpu.MIN_WORK` should be about the largest crossover, so that no loop is
put on threads that cost it time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

for _k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_k, None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

from codegen.cache import load_module  # noqa: E402
from codegen.cpu import render_module  # noqa: E402
from codegen.ir import Buffer, I, J, Loop, Program, RowOp, RowSum  # noqa: E402

R = sp.Symbol("R", integer=True, positive=True)
COLUMNS = 128


def _programs() -> dict[str, tuple[Program, int]]:
    """Each kind's program (its arrays are rows × columns) and its columns."""
    Z, b = sp.IndexedBase("Z"), sp.IndexedBase("b")
    relu = Loop((R, COLUMNS), (("A", sp.Max(0, Z[I, J] + b[J])),), formulas=("A = relu(Z + b)",))
    W, G, M, V = (sp.IndexedBase(n) for n in ("W", "G", "M", "V"))
    b1, b2, lr, eps, k2, k3 = sp.symbols("beta1 beta2 lr eps c2 c3", real=True)
    m = b1 * M[I, J] + (1 - b1) * G[I, J]
    v = b2 * V[I, J] + (1 - b2) * G[I, J] ** 2
    update = W[I, J] - lr * (k2 * M[I, J]) / (eps + sp.sqrt(k3 * V[I, J]))  # the new M, V
    adam = Loop((R, COLUMNS), (("M", m), ("V", v), ("W", update)), formulas=("Adam",))
    shapes = {"Z": (R, COLUMNS), "A": (R, COLUMNS), "b": (COLUMNS,), "W": (R, COLUMNS),
              "G": (R, COLUMNS), "M": (R, COLUMNS), "V": (R, COLUMNS), "S": (R, 10),
              "P": (R, 10), "L": (R, 10), "db": (COLUMNS,)}
    kinds = {"relu": ((relu,), ("Z", "b", "A"), (), COLUMNS),
             "adam": ((adam,), ("W", "G", "M", "V"), ("beta1", "beta2", "lr", "eps", "c2", "c3"),
                      COLUMNS),
             "softmax": ((RowOp("softmax_log_softmax", "P", ("S",), "softmax", "L"),),
                         ("S", "P", "L"), (), 10),
             "bias_grad": ((RowSum("db", "Z", "db = Z*1"),), ("Z", "db"), (), COLUMNS)}
    programs = {}
    for name, (ops, arguments, scalars, columns) in kinds.items():
        buffers = {n: Buffer(n, shapes[n]) for n in arguments}
        programs[name] = (Program(name, ops, arguments, scalars, buffers), columns)
    return programs


def _arguments(program: Program, rows: int, rng) -> list:
    arrays = []
    for name in program.arguments:
        shape = tuple(rows if d == R else int(d) for d in program.buffers[name].shape)
        arrays.append(np.abs(rng.standard_normal(shape)).astype(np.float32))
    return arrays + [np.float32(0.9)] * len(program.scalars)


def _block(f, args, k: int) -> float:
    f(*args)  # wakes the threads up: a step keeps them busy, from one loop to the next
    start = time.perf_counter()
    for _ in range(k):
        f(*args)
    return (time.perf_counter() - start) / k


def measure(rounds: int, blocks: int) -> list[dict]:
    rows_out = []
    rng = np.random.default_rng(0)
    for kind, (program, columns) in _programs().items():
        fs = {}
        for parallel in (False, True):
            source = render_module([program], R, parallel, real="float32", min_work=0)
            fs[parallel] = getattr(load_module(source, {"bench": "threshold"}), kind)
        entries = 1 << 9
        while entries <= 1 << 20:
            rows = max(1, entries // columns)
            args = _arguments(program, rows, rng)
            for f in fs.values():
                f(*args)
            k = max(1, int(2e-3 / max(_block(fs[False], args, 3), 1e-7)))
            times = {False: [], True: []}
            for _ in range(rounds * blocks):
                for parallel in (False, True):
                    times[parallel].append(_block(fs[parallel], args, k))
            serial, threaded = (statistics.median(times[p]) for p in (False, True))
            rows_out.append({"kind": kind, "entries": rows * columns, "serial_s": serial,
                             "threaded_s": threaded})
            entries *= 2
    return rows_out


def crossover(rows: list[dict], kind: str) -> int | None:
    """The smallest size from which threads win at every larger size."""
    mine = [r for r in rows if r["kind"] == kind]
    found = None
    for r in reversed(mine):
        if r["threaded_s"] >= r["serial_s"]:
            break
        found = r["entries"]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    rows = measure(args.rounds, args.blocks)
    threads = numba.get_num_threads()
    print(f"## serial vs prange, {threads} threads ({numba.threading_layer()} layer), "
          f"float32, µs per call (median of {args.rounds * args.blocks} blocks)\n")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    print("| entries | " + " | ".join(f"{k} serial | {k} threads" for k in kinds) + " |")
    print("|---:|" + "---:|" * (2 * len(kinds)))
    for entries in sorted({r["entries"] for r in rows if r["kind"] == "relu"}):
        cells = []
        for k in kinds:
            match = min((r for r in rows if r["kind"] == k),
                        key=lambda r: abs(r["entries"] - entries))
            faster = match["threaded_s"] < match["serial_s"]
            cells += [f"{match['serial_s'] * 1e6:.2f}",
                      f"{'**' if faster else ''}{match['threaded_s'] * 1e6:.2f}"
                      f"{'**' if faster else ''}"]
        print(f"| {entries:,} | " + " | ".join(cells) + " |")
    print("\ncrossover (threads faster from here on):")
    for k in kinds:
        found = crossover(rows, k)
        print(f"  {k}: {'never' if found is None else f'{found:,} entries'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
