"""Time the fused train step in the working tree against a git revision, interleaved.

Usage:
    .venv/bin/python tools/step_time_ab.py REV [--rounds 3] [--batches 1,256] [--default-threads]

For a change that must not slow the step (a refactor), or one that should speed it up:
784-128-10 (ReLU, cross-entropy, float32, ``check_finite=False`` as the benchmarks compile
it) with SGD and Adam at the given batches (1 and 256 unless told).  Each round runs the
revision, then the working tree, each in a fresh process with its own empty kernel cache,
pinned to one core (``taskset -c 0`` where present, one BLAS and Numba thread), or with the
default threads (``--default-threads``: no thread variable, no taskset); a process reports
the median µs per step over 15 blocks.  The table gives each tree's median over the rounds
and their ratio; the rounds' ranges show the noise.  Each process trains one fixed batch for
thousands of steps: Adam at batch 1 and 32 fits it, its gradients go denormal, and on CPUs
with slow denormals (an Intel Xeon host: 10× slower steps) those rows time that, in both
trees (`benchmarks/denormals.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision import ROOT, checked_out, resolve  # noqa: E402

# Run in the tree under test (PYTHONPATH); the benchmarked MLP is the working tree's.
CHILD = """
import json, statistics, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from mlp import symnet_mlp, symnet_optimizer
import symnet as sn
results = {}
for optimizer, batch in json.loads(sys.argv[2]):
    model = symnet_mlp((784, 128, 10))
    step = sn.compile(model, sn.CrossEntropyLoss(),
                      symnet_optimizer(optimizer, model.parameters()), check_finite=False)
    rng = np.random.default_rng(0)
    X, y = rng.random((batch, 784), np.float32), rng.integers(0, 10, batch)
    k = max(2, 2000 // batch)
    for _ in range(k):
        step(X, y)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        for _ in range(k):
            step(X, y)
        times.append((time.perf_counter() - start) / k * 1e6)
    results[f"{optimizer} {batch}"] = statistics.median(times)
print(json.dumps(results))
"""


THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")


def measure(tree: Path, scratch: Path, configs: list, one_core: bool) -> dict[str, float]:
    """One fresh process in ``tree``: median µs per step of each config."""
    cache = tempfile.mkdtemp(prefix="symnet-cache-", dir=scratch)  # mode 0o700
    env = {k: v for k, v in os.environ.items()
           if k not in THREAD_VARIABLES and k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env |= {"PYTHONPATH": str(tree), "SYMNET_CACHE_DIR": cache}
    pin = []
    if one_core:
        env |= dict.fromkeys(THREAD_VARIABLES, "1")
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    done = subprocess.run([*pin, sys.executable, "-c", CHILD, str(ROOT / "benchmarks"),
                           json.dumps(configs)], env=env, cwd=tree, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--default-threads", action="store_true",
                        help="the threads a user gets (else one core)")
    args = parser.parse_args(argv)
    rev = resolve(args.rev)
    configs = [(optimizer, int(batch)) for optimizer in ("SGD", "Adam")
               for batch in args.batches.split(",")]
    runs: dict[str, list[dict[str, float]]] = {"base": [], "ours": []}
    with checked_out(rev) as (base, scratch):
        for _ in range(args.rounds):
            for tree, found in ((base, runs["base"]), (ROOT, runs["ours"])):
                found.append(measure(tree, scratch, configs, not args.default_threads))
    print("default threads" if args.default_threads else "one core")
    print(f"| config | {args.rev} ({rev[:10]}) µs | working tree µs | ratio | rounds, "
          f"{args.rev} | rounds, working tree |")
    print("|---|---:|---:|---:|---|---|")
    for optimizer, batch in configs:
        name = f"{optimizer} {batch}"
        a, b = ([r[name] for r in runs[t]] for t in ("base", "ours"))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| 784-128-10 {name} | {ma:.1f} | {mb:.1f} | {mb / ma:.3f} | "
              f"{min(a):.1f}–{max(a):.1f} | {min(b):.1f}–{max(b):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
