"""One fused training step with several threads: each contestant alone in its own process.

``train_step.py`` interleaves symnet and PyTorch in one process, which is fair on one thread.
With several threads it is not: after its block each library's thread pool keeps spinning
(OpenBLAS's workers, PyTorch's OpenMP team) and takes cores from the other's next block, so
both sides measure slower than they run (PyTorch at batch 256 took 2.2–2.7 ms there on two
threads against 1.6 ms on one).  Here each measurement is a fresh process that runs only
one library: 784-128-10 (ReLU, cross-entropy, float32), after a warm-up, the median of 31
blocks of steps; processes alternate symnet / PyTorch for ``--rounds`` rounds, and the table
gives the median over rounds (and the range).  speedup = PyTorch time / symnet time.

Usage:
    .venv/bin/python benchmarks/threads.py                    # 2 threads, batch 256 and 4096
    .venv/bin/python benchmarks/threads.py --threads 1 --batches 256 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (784, 128, 10)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for both libraries (default: every core)")
    p.add_argument("--batches", default="256,4096")
    p.add_argument("--optimizers", default="SGD,Adam")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--blocks", type=int, default=31)
    p.add_argument("--child", choices=("symnet", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--optimizer", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(who: str, optimizer: str, batch: int, threads: int, blocks: int) -> dict:
    """Time one library's step alone (this process's environment already set the threads)."""
    import gc

    import numpy as np

    sys.path.insert(0, str(HERE))
    from mlp import symnet_mlp, symnet_optimizer, torch_mlp

    rng = np.random.default_rng(batch)
    X = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], batch).astype(np.int64)
    model = symnet_mlp(SIZES)
    if who == "symnet":
        import symnet as sn

        step = sn.compile(model, sn.CrossEntropyLoss(),
                          symnet_optimizer(optimizer, model.parameters()), check_finite=False)

        def run():
            step(X, y)
    else:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        net, opt = torch_mlp(torch, SIZES, model, optimizer)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

        def run():
            opt.zero_grad()
            F.cross_entropy(net(Xt), yt).backward()
            opt.step()

    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < 0.3:  # warm-up
        run()
        calls += 1
    k = max(1, round(0.02 / ((time.perf_counter() - start) / calls)))  # 20 ms blocks
    gc.disable()
    times = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(k):
            run()
        times.append((time.perf_counter() - t) / k)
    return {"median_s": float(np.median(times))}


def measure(who: str, optimizer: str, batch: int, threads: int, blocks: int) -> float:
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    done = subprocess.run([sys.executable, __file__, "--child", who, "--optimizer", optimizer,
                           "--batch", str(batch), "--threads", str(threads),
                           "--blocks", str(blocks)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"threads.py: the {who} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["median_s"]


def _time(s: float) -> str:
    return f"{s * 1e3:,.2f} ms" if s >= 0.01 else f"{s * 1e6:,.1f} µs"


def main() -> int:
    args = _parse()
    if args.child:
        print(json.dumps(child(args.child, args.optimizer, args.batch, args.threads,
                               args.blocks)))
        return 0
    import numpy as np

    print(f"## 784-128-10 train step, {args.threads} thread(s) per library, each alone in "
          f"its own process ({args.rounds} rounds, median of {args.blocks} blocks each)\n")
    print("| optimizer | batch | symnet | PyTorch eager | speedup (median) | range over rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    for optimizer in args.optimizers.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            times: dict[str, list[float]] = {"symnet": [], "torch": []}
            for r in range(args.rounds):
                for who in (("symnet", "torch") if r % 2 == 0 else ("torch", "symnet")):
                    times[who].append(measure(who, optimizer, batch, args.threads,
                                              args.blocks))
            ours, theirs = (float(np.median(times[w])) for w in ("symnet", "torch"))
            ratios = [t / s for s, t in zip(times["symnet"], times["torch"])]
            print(f"| {optimizer} | {batch} | {_time(ours)} | {_time(theirs)} | "
                  f"**{theirs / ours:.2f}×** | {min(ratios):.2f}–{max(ratios):.2f}× |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
