"""Data-parallel scaling on one machine: steps/second of `DistributedStep` at 1 and 2 ranks.

Usage:
    .venv/bin/python benchmarks/mpi_scaling.py              # 1 and 2 ranks, ~1 minute
    .venv/bin/python benchmarks/mpi_scaling.py --ranks 1,2,4 --seconds 5
    .venv/bin/python benchmarks/mpi_scaling.py --quick      # smoke run

784-128-10 (ReLU, cross-entropy, Adam, float32) on random data at global batch 256 and 4096.
For each rank count the script starts ``mpiexec -n R`` (the one next to this Python) on
itself; every rank times each step and the ``Allreduce`` inside it (``timed=True``) for
``--seconds`` after a warm-up.  A step's time is the slowest rank's median; the Allreduce
share is its median over the ranks' medians, divided by the step time.  Waiting for a
slower rank counts as Allreduce time; a bare Allreduce of the same buffer (after a
Barrier) is printed below the table for the communication alone.  The fused one-process
step (``sn.compile``) is the baseline row.  Each rank runs BLAS and Numba with
``--threads`` threads (default 1), so two ranks on two cores do not oversubscribe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # slow a current OpenBLAS down
    os.environ.pop(_var, None)
LAYERS = (784, 128, 10)
BATCHES = (256, 4096)
WARMUP = 5  # steps before timing: the first calls allocate buffers


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="1,2", help="rank counts to run (default 1,2)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row")
    p.add_argument("--threads", type=int, default=1, help="BLAS/Numba threads per rank")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.3 s per row")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _problem(batch: int):
    import numpy as np

    import symnet as sn

    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(LAYERS[0], LAYERS[1]), sn.ReLU(),
                          sn.Linear(LAYERS[1], LAYERS[2]))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, LAYERS[0])).astype(np.float32)
    y = rng.integers(0, LAYERS[-1], batch)
    return model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters(), lr=1e-3), X, y


def worker(args) -> None:
    """One rank: time every batch size; rank 0 writes the medians."""
    import numpy as np

    from symnet.backends.mpi import DistributedStep, broadcast_parameters, mpi

    comm = mpi().COMM_WORLD
    rows = []
    for batch in BATCHES:
        model, loss, optimizer, X, y = _problem(batch)
        broadcast_parameters(model, comm)
        step = DistributedStep(model, loss, optimizer, comm, timed=True)
        # Every rank must call step() equally often (each call is a collective): a few
        # warm-up steps, then rank 0 picks the count that fills --seconds.
        for _ in range(WARMUP):
            step(X, y)
        estimate = float(np.median(step.timings["step"][1:]))
        steps = comm.bcast(max(5, int(args.seconds / estimate)))
        for _ in range(steps):
            step(X, y)
        timings = {k: float(np.median(v[WARMUP:])) for k, v in step.timings.items()}
        gathered = comm.gather(timings)
        if comm.rank == 0:
            step_s = max(t["step"] for t in gathered)
            reduce_s = float(np.median([t["allreduce"] for t in gathered]))
            rows.append({"ranks": comm.size, "batch": batch, "step_ms": 1e3 * step_s,
                         "steps_per_s": 1 / step_s, "allreduce_ms": 1e3 * reduce_s,
                         "allreduce_share": reduce_s / step_s, "steps": steps})
    bare = _bare_allreduce(comm, step.buffer)
    if comm.rank == 0:
        for row in rows:
            row["bare_allreduce_ms"] = 1e3 * bare
        Path(args.worker).write_text(json.dumps(rows))


def _bare_allreduce(comm, buffer, repeats: int = 200) -> float:
    """Median seconds of an Allreduce of the step's buffer alone, after a Barrier each time:
    the communication itself, without waiting for a slower rank's compute."""
    import numpy as np

    from symnet.backends.mpi import mpi

    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(mpi().IN_PLACE, buffer, op=mpi().SUM)
        times.append(time.perf_counter() - start)
    return float(np.median(comm.allgather(float(np.median(times)))))


def fused_baseline(seconds: float) -> list[dict]:
    """The one-process fused step at the same sizes, timed per step."""
    import numpy as np

    import symnet as sn

    rows = []
    for batch in BATCHES:
        model, loss, optimizer, X, y = _problem(batch)
        step = sn.compile(model, loss, optimizer)
        times = []
        for _ in range(3):
            step(X, y)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            start = time.perf_counter()
            step(X, y)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        rows.append({"ranks": "fused", "batch": batch, "step_ms": 1e3 * median,
                     "steps_per_s": 1 / median, "allreduce_ms": 0.0, "allreduce_share": 0.0,
                     "steps": len(times)})
    return rows


def _buffer_size() -> int:
    return sum(o * i + o for i, o in zip(LAYERS[:-1], LAYERS[1:])) + 2


def _table(rows: list[dict]) -> str:
    lines = [f"{'ranks':>6} {'batch':>6} {'step ms':>9} {'steps/s':>9} {'speed-up':>9} "
             f"{'allreduce ms':>13} {'allreduce %':>12}"]
    one = {r["batch"]: r["steps_per_s"] for r in rows if r["ranks"] == 1}
    for r in sorted(rows, key=lambda r: (r["batch"], str(r["ranks"]))):
        speedup = r["steps_per_s"] / one[r["batch"]] if r["batch"] in one else float("nan")
        lines.append(f"{r['ranks']!s:>6} {r['batch']:>6} {r['step_ms']:>9.3f} "
                     f"{r['steps_per_s']:>9.1f} {speedup:>8.2f}x {r['allreduce_ms']:>13.3f} "
                     f"{100 * r['allreduce_share']:>11.1f}%")
    return "\n".join(lines)


def main(args) -> None:
    seconds = 0.3 if args.quick else args.seconds
    env = {**os.environ, **{v: str(args.threads) for v in (
        "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    mpiexec = Path(sys.executable).with_name("mpiexec")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in map(int, args.ranks.split(",")):
            out = Path(tmp) / f"ranks{ranks}.json"
            subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, __file__,
                            "--worker", str(out), "--seconds", str(seconds)], env=env,
                           check=True)
            rows += json.loads(out.read_text())
        baseline = Path(tmp) / "fused.json"
        code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import mpi_scaling as m; json.dump(m.fused_baseline({seconds}), "
                f"open({str(baseline)!r}, 'w'))")
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        rows += json.loads(baseline.read_text())
    print(f"784-128-10 ReLU, cross-entropy, Adam, float32; {args.threads} thread(s) per rank; "
          f"medians over ~{seconds:g} s per row; {os.cpu_count()} CPUs")
    print(_table(rows))
    for r in rows:
        if r["ranks"] not in (1, "fused") and r["batch"] == BATCHES[0]:
            print(f"bare Allreduce of the {r['ranks']}-rank step buffer (float32, "
                  f"{_buffer_size()} entries): {r['bare_allreduce_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    ARGS = _parse()
    if ARGS.worker:
        worker(ARGS)
    else:
        main(ARGS)
