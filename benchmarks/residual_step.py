"""Median time of one fused AdamW step of a residual LayerNorm model on one core: symnet vs
PyTorch eager, against the FLOP floor; and the symnet step's cold compile and cache load.

Usage:
    .venv/bin/python benchmarks/residual_step.py               # full run (~40 s on 2 cores)
    .venv/bin/python benchmarks/residual_step.py --quick       # smoke run (~25 s: the cold compile)
    .venv/bin/python benchmarks/residual_step.py --json out.json --rounds 5

The model, declared as a user would (``Block`` below; hidden width 256)::

    Sequential(Linear(784, 256), Block(256, 256), Linear(256, 10))
    Block(d, hidden): x + fc2(gelu(fc1(norm(x)))), norm = LayerNorm(d)

float32, cross-entropy on integer labels, AdamW (lr 1e-3, weight decay 0.01), batch 32 and
256, one fixed random batch per size, on one thread:

- symnet: ``sn.compile(model, sn.CrossEntropyLoss(), sn.optim.AdamW(model.parameters(),
  lr=1e-3), check_finite=False, parallel=False)``, called as ``step(X, y)``;
- PyTorch eager: the same layers (``torch.nn.LayerNorm``, exact ``F.gelu``), symnet's
  initial weights through ``load_state_dict``, ``torch.optim.AdamW(lr=1e-3)`` (its defaults,
  weight decay 0.01 as symnet's), ``torch.set_num_threads(1)``; ``zero_grad``;
  ``cross_entropy``; ``backward``; ``opt.step()``.

As in ``train_step.py``: each measurement is a fresh child process running ONE library,
under ``taskset -c <first allowed CPU>`` with OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS = 1.  A child measures the best 1024×1024 float32
``np.dot`` rate first, then per batch size builds the step, runs 5 steps (the losses of
step 1 and 5 are the sanity check: symnet and PyTorch must agree within a relative 1e-3),
warms up, and times ``--blocks`` blocks of k steps (a block lasts about 30 ms); the median
block is the child's figure.  ``--rounds`` rounds of one child per library, the order
alternating; the table shows the median over rounds.  OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
are dropped from the environment (they halve a current OpenBLAS's speed).

FLOP floor: the multiply-adds of the step's matrix products, 2 flops each — forward
``N·in·out`` per Linear, weight gradient ``N·in·out`` per Linear, input gradient
``N·in·out`` per Linear but the first — at the best one-core GEMM rate of the run.
LayerNorm, GELU, softmax and AdamW's elementwise work are left out, so no step reaches it.

Compile: three fresh processes sharing one empty cache folder (SYMNET_CACHE_DIR and
NUMBA_CACHE_DIR): "derive" times ``sn.derive`` alone (the SymPy share), "cold" times
``sn.compile`` through the first step returning, "cache load" the same again once the
kernel and the step index are on disk.  The timing children then load from that folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

_DROPPED_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}

from train_step import (  # noqa: E402  (after the environment is cleaned, before NumPy)
    THREAD_VARS,
    blas_pools,
    cpu_name,
    gemm_gflops,
    load_average,
    run_json,
    taskset_cpu,
)

LIBRARIES = ("symnet", "torch")
LABEL = {"symnet": "symnet", "torch": "PyTorch"}
BATCHES = (32, 256)
D, HIDDEN, IN, OUT = 256, 256, 784, 10
LINEARS = ((IN, D), (D, HIDDEN), (HIDDEN, D), (D, OUT))  # (in, out) of each product, in order
LR = 1e-3
LOSS_RTOL = 1e-3
CHECK_STEPS = 5
BUSY_CORES = 0.25  # other processes' average load during a child that the report names
UNSTABLE = 1.3  # a cell whose rounds differ by more than this factor is named too
TARGETS = {"speedup": {32: 2.0, 256: 1.25}, "floor": {256: 1.15}, "cold_s": 10.0,
           "cached_s": 0.5}
MODEL_NAME = f"{IN}-{D}-[LayerNorm residual block {D}, hidden {HIDDEN}]-{OUT}"


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 blocks")
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--rounds", type=int, help="rounds of children (default 3, quick 1)")
    p.add_argument("--blocks", type=int, help="timed blocks per batch (default 15, quick 3)")
    p.add_argument("--batches", metavar="LIST", help="only these batch sizes, e.g. 256")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the derive / cold-compile / cache-load processes")
    p.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--compile-phase", choices=("derive", "cold", "cached"),
                   help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------
# the two models
# ------------------------------------------------------------------------------------------
def symnet_model(seed: int = 0):
    """The benchmarked model in symnet: ``examples/custom_layer.py``'s residual Block."""
    import importlib.util

    import symnet as sn

    path = Path(__file__).resolve().parent.parent / "examples" / "custom_layer.py"
    spec = importlib.util.spec_from_file_location("custom_layer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    Block = example.Block  # noqa: N806 - a class
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(IN, D), Block(D, HIDDEN), sn.Linear(D, OUT))


def torch_model(torch, sn_model):
    """The same model in PyTorch, with ``sn_model``'s weights (its state-dict keys match)."""

    class Block(torch.nn.Module):
        def __init__(self, d, hidden):
            super().__init__()
            self.norm = torch.nn.LayerNorm(d)
            self.fc1 = torch.nn.Linear(d, hidden)
            self.fc2 = torch.nn.Linear(hidden, d)

        def forward(self, x):
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    model = torch.nn.Sequential(torch.nn.Linear(IN, D), Block(D, HIDDEN),
                                torch.nn.Linear(D, OUT))
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in sn_model.state_dict().items()}, strict=True)
    return model


def batch_of(n: int):
    import numpy as np

    rng = np.random.default_rng(n)
    return (rng.standard_normal((n, IN)).astype(np.float32),
            rng.integers(0, OUT, n).astype(np.int64))


def build_symnet(X, y):
    import symnet as sn

    model = symnet_model()
    opt = sn.optim.AdamW(model.parameters(), lr=LR)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False, parallel=False)
    return lambda: step(X, y)


def build_torch(X, y):
    import torch
    from mlp import torch_step

    torch.set_num_threads(1)
    model = torch_model(torch, symnet_model())
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    return torch_step(model, opt, torch.from_numpy(X), torch.from_numpy(y))


BUILD = {"symnet": build_symnet, "torch": build_torch}


# ------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------
def time_batch(library: str, n: int, spec: dict) -> dict:
    """Build the step for batch ``n``, check its first losses, warm it up, time it in blocks."""
    X, y = batch_of(n)
    step = BUILD[library](X, y)
    losses = [float(step()) for _ in range(CHECK_STEPS)]
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < spec["warmup_s"]:
        step()
        calls += 1
    k = max(1, round(spec["block_s"] / ((time.perf_counter() - start) / calls)))
    times = []
    gc.disable()
    try:
        for _ in range(spec["blocks"]):
            t = time.perf_counter()
            for _ in range(k):
                step()
            times.append((time.perf_counter() - t) / k)
    finally:
        gc.enable()
    return {"batch": n, "median_s": statistics.median(times), "min_s": min(times), "k": k,
            "losses": losses}


def child_main(library: str, spec: dict) -> dict:
    import numpy as np

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if library == "symnet":
        import numba

        import symnet as sn
        versions.update(symnet=f"{sn.__version__} ({Path(sn.__file__).parent})",
                        numba=numba.__version__)
    else:
        import torch
        versions.update(torch=torch.__version__)
    rate = gemm_gflops(spec["gemm_reps"])  # before the library's own pools start
    rows = [time_batch(library, n, spec) for n in spec["batches"]]
    threads: dict = {"openblas": [d.get("num_threads") for d in blas_pools()
                                  if d.get("user_api") == "blas"],
                     "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else None}
    if library == "torch":
        threads["torch"] = torch.get_num_threads()
    else:
        threads["numba"] = numba.get_num_threads()
    return {"versions": versions, "gemm_gflops": rate, "rows": rows, "threads": threads}


def compile_child(phase: str) -> dict:
    """One phase of the compile measurement, in this fresh process."""
    t0 = time.perf_counter()
    import symnet as sn
    t1 = time.perf_counter()
    model = symnet_model()
    opt = sn.optim.AdamW(model.parameters(), lr=LR)
    X, y = batch_of(32)
    t2 = time.perf_counter()
    if phase == "derive":
        sn.derive(model, sn.CrossEntropyLoss(), opt)
        return {"import_s": t1 - t0, "derive_s": time.perf_counter() - t2}
    step = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False, parallel=False)
    t3 = time.perf_counter()
    step(X, y)
    t4 = time.perf_counter()
    return {"import_s": t1 - t0, "compile_call_s": t3 - t2, "first_step_s": t4 - t3,
            "total_s": t4 - t2}


# ------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------
def run(command: list[str], env: dict, what: str) -> dict:
    return run_json(command, env, f"residual_step.py: the {what} child")


def one_core_env(cache: str, cpu: int | None) -> tuple[list[str], dict]:
    env = dict(os.environ, SYMNET_CACHE_DIR=cache, NUMBA_CACHE_DIR=cache)
    env.update({v: "1" for v in THREAD_VARS})
    return (["taskset", "-c", str(cpu)] if cpu is not None else []), env


def compile_times(cache: str, cpu: int | None) -> dict:
    """Derive alone, then cold compile, then cache load: each a fresh process on one core."""
    prefix, env = one_core_env(cache, cpu)
    me = [sys.executable, str(Path(__file__).resolve())]
    out = {}
    for phase in ("derive", "cold", "cached"):
        out[phase] = run([*prefix, *me, "--compile-phase", phase], env, phase)
        print(f"  compile, {phase:6s}: {out[phase]['wall_s']:5.1f} s", file=sys.stderr,
              flush=True)
    return out


def run_rounds(rounds: int, spec: dict, cache: str, cpu: int | None) -> list[dict]:
    prefix, env = one_core_env(cache, cpu)
    runs = []
    for r in range(rounds):
        for library in (LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]):
            command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child",
                       library, "--spec", json.dumps(spec)]
            out = run(command, env, LABEL[library])
            runs.append({**out, "library": library, "round": r})
            other = out["other_cores"]
            print(f"  round {r + 1}/{rounds}, {LABEL[library]:8s}: {out['wall_s']:5.1f} s"
                  + (f" (other processes: {other:.2f} cores)" if other is not None else ""),
                  file=sys.stderr, flush=True)
    return runs


def flops(n: int) -> int:
    """2 flops per multiply-add: forward and weight gradient of every product, input
    gradient of every product but the first (the batch needs none)."""
    products = [a * b for a, b in LINEARS]
    return 2 * n * (2 * sum(products) + sum(products[1:]))


def summarise(runs: list[dict], batches: list[int]) -> dict:
    rate = max(r["gemm_gflops"] for r in runs)
    rows = []
    for n in batches:
        row: dict = {"batch": n, "flops": flops(n), "floor_s": flops(n) / (rate * 1e9),
                     "per_round": {}, "times": {}}
        for library in LIBRARIES:
            values = [x["median_s"] for r in runs if r["library"] == library
                      for x in r["rows"] if x["batch"] == n]
            if values:
                row["per_round"][library] = values
                row["times"][library] = statistics.median(values)
        ours, theirs = row["times"].get("symnet"), row["times"].get("torch")
        row["speedup"] = theirs / ours if ours and theirs else None
        row["over_floor"] = ours / row["floor_s"] if ours else None
        rows.append(row)
    return {"gemm_gflops": rate, "rows": rows}


def sanity(runs: list[dict]) -> tuple[float, list[str]]:
    """Worst relative difference of every run's losses from the first symnet run's."""
    reference = {x["batch"]: x["losses"] for x in runs[0]["rows"]}
    worst, bad = 0.0, []
    for r in runs:
        for x in r["rows"]:
            for i in (0, CHECK_STEPS - 1):
                a, b = reference[x["batch"]][i], x["losses"][i]
                diff = abs(a - b) / max(abs(a), abs(b), 1e-30)
                if not diff <= LOSS_RTOL:  # NaN too
                    bad.append(f"N={x['batch']} step {i + 1}: {LABEL[runs[0]['library']]} "
                               f"{a:.7g} vs {LABEL[r['library']]} (round {r['round'] + 1}) "
                               f"{b:.7g}")
                worst = max(worst, diff) if diff == diff else float("inf")
    return worst, bad


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def _us(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e6:,.1f} µs"


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def print_table(summary: dict) -> None:
    print("| config | symnet µs/step | PyTorch µs/step | PyTorch / symnet | FLOP floor | "
          "symnet / floor | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in summary["rows"]:
        n, speedup, over = row["batch"], row["speedup"], row["over_floor"]
        goal = TARGETS["speedup"].get(n)
        floor_goal = TARGETS["floor"].get(n)
        met = speedup is not None and goal is not None and speedup >= goal
        if floor_goal is not None and over is not None:
            met = met or over <= floor_goal
        target = (f"≥ {goal:g}× PyTorch" if goal else "") + (
            f" or ≤ {floor_goal:g}× floor" if floor_goal else "")
        print(f"| AdamW N={n} | {_us(row['times'].get('symnet'))} | "
              f"{_us(row['times'].get('torch'))} | "
              f"{f'{speedup:.2f}×' if speedup else '—'} | {_us(row['floor_s'])} | "
              f"{f'{over:.2f}×' if over else '—'} | {target} {_mark(met)} |")


def print_compiles(compiles: dict) -> None:
    d, cold, cached = compiles["derive"], compiles["cold"], compiles["cached"]
    print("\n| symnet step, fresh process | sn.compile | first step | sn.compile → first "
          "step returns | target | import symnet |")
    print("|---|---:|---:|---:|---|---:|")
    for label, c, goal in (("cold (empty cache)", cold, TARGETS["cold_s"]),
                           ("cache load", cached, TARGETS["cached_s"])):
        print(f"| {label} | {c['compile_call_s']:.2f} s | {c['first_step_s']:.2f} s | "
              f"**{c['total_s']:.2f} s** | < {goal:g} s {_mark(c['total_s'] < goal)} | "
              f"{c['import_s']:.2f} s |")
    print(f"\n(of the cold compile, `sn.derive` alone takes {d['derive_s']:.2f} s in its own "
          f"fresh process: the SymPy share; the rest is lowering, Numba and LLVM)")


def print_header(runs: list[dict], spec: dict, rounds: int, cpu: int | None, loads: tuple,
                 quick: bool, rate: float) -> None:
    print(f"## symnet vs PyTorch eager: one fused AdamW step of {MODEL_NAME}, GELU, "
          f"float32, one thread (median over {rounds} round(s) of the median of "
          f"{spec['blocks']} blocks{' — QUICK smoke run' if quick else ''})\n")
    print(f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}; load "
          f"average at start / end: {loads[0]} / {loads[1]}")
    versions: dict = {}
    for r in runs:
        versions.update(r["versions"])
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    pinned = f"taskset -c {cpu}" if cpu is not None else "NO taskset: only the thread variables"
    print(f"- each library alone in a fresh process, {pinned}, {', '.join(THREAD_VARS)}=1; "
          f"threads seen: " + "; ".join(f"{LABEL[r['library']]} {r['threads']}"
                                        for r in runs[:len(LIBRARIES)]))
    print(f"- float32 GEMM 1024×1024 np.dot, one core (best of the run's children): "
          f"{rate:.1f} GFLOP/s")
    print(f"- dropped from the environment: {_DROPPED_ENV or 'nothing (none was set)'}")
    busy = max((loads[0] or [0])[0], (loads[1] or [0])[0])
    if busy > (os.cpu_count() or 1) * 0.75:  # this run itself adds about 1
        print(f"- WARNING: load average {busy} on {os.cpu_count()} CPUs: other processes "
              "share the cores; the figures are noisy (see the notes below the table)")
    print()


def noise_notes(runs: list[dict], summary: dict, compiles: dict) -> list[str]:
    notes = []
    children = [(f"round {r['round'] + 1} {LABEL[r['library']]}", r) for r in runs]
    children += [(f"compile {phase}", c) for phase, c in compiles.items()]
    busy = [f"{name} ({c['other_cores']:.2f})" for name, c in children
            if (c.get("other_cores") or 0) > BUSY_CORES]
    if busy:
        notes.append(f"other processes kept more than {BUSY_CORES} cores busy during: "
                     + ", ".join(busy))
    for row in summary["rows"]:
        for library, values in row["per_round"].items():
            if len(values) > 1 and max(values) > UNSTABLE * min(values):
                notes.append(f"rounds disagree: N={row['batch']} {LABEL[library]}: "
                             + " / ".join(_us(v) for v in values))
    return notes


def main() -> int:
    args = _parse()
    if args.compile_phase:
        print(json.dumps(compile_child(args.compile_phase)))
        return 0
    if args.child:
        print(json.dumps(child_main(args.child, json.loads(args.spec))))
        return 0
    t_start = time.perf_counter()
    rounds = args.rounds or (1 if args.quick else 3)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(BATCHES)
    spec = {"batches": batches, "blocks": args.blocks or (3 if args.quick else 15),
            "block_s": 0.01 if args.quick else 0.03, "warmup_s": 0.05 if args.quick else 0.3,
            "gemm_reps": 3 if args.quick else 8}
    cpu = taskset_cpu()
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="symnet-residual-cache-") as cache:
        compiles = {} if args.no_compile else compile_times(cache, cpu)
        runs = run_rounds(rounds, spec, cache, cpu)
    loads = (load_start, load_average())
    summary = summarise(runs, batches)

    print_header(runs, spec, rounds, cpu, loads, args.quick, summary["gemm_gflops"])
    print_table(summary)
    notes = noise_notes(runs, summary, compiles)
    if notes:
        print("\nNoise (each round's values are in --json):")
        for line in notes:
            print(f"- {line}")
    if compiles:
        print_compiles(compiles)
    worst, bad = sanity(runs)
    if bad:
        print(f"\n**SANITY FAILURE: the losses disagree (relative difference > "
              f"{LOSS_RTOL:g}); a step is wrong and its times mean nothing:**")
        for line in bad:
            print(f"- {line}")
    else:
        print(f"\nsanity: OK, losses of step 1 and step {CHECK_STEPS} (same weights, same "
              f"batch) agree between symnet and PyTorch in every round: worst relative "
              f"difference {worst:.1e} (< {LOSS_RTOL:g})")
    total = time.perf_counter() - t_start
    print(f"whole run: {total:.0f} s")
    if args.json:
        result = {"model": MODEL_NAME, "quick": args.quick, "rounds": rounds, "spec": spec,
                  "taskset_cpu": cpu, "machine": {"cpu": cpu_name(),
                                                  "cpu_count": os.cpu_count()},
                  "dropped_env": _DROPPED_ENV, "load_average": {"start": loads[0],
                                                                "end": loads[1]},
                  "summary": summary, "runs": runs, "compile": compiles, "noise": notes,
                  "sanity": {"worst_relative_difference": worst, "disagreements": bad},
                  "targets": TARGETS, "run_s": total}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
