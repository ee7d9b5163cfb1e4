"""Median time of one fused training step: symnet vs PyTorch eager, against the FLOP floor.

Usage:
    .venv/bin/python benchmarks/train_step.py                 # full run (a few minutes)
    .venv/bin/python benchmarks/train_step.py --quick         # smoke run (< 60 s, warm cache)
    .venv/bin/python benchmarks/train_step.py --json out.json # also write the results
    .venv/bin/python benchmarks/train_step.py --threads 1     # pin BLAS/Numba/torch threads

Rows: 784-128-10 (ReLU, cross-entropy) with SGD and Adam at batch 1, 32, 256, 4096, and
784-512-512-10 at batch 256, float32; plus ``sn.compile(..., parallel=True)`` rows.  For
each row the symnet step and a standard PyTorch eager loop (``zero_grad``; ``cross_entropy``;
``backward``; ``opt.step()``, torch.optim with its default ``foreach``; the symnet step with
``check_finite=False``, since PyTorch checks nothing either) run in the same
process, in interleaved timing blocks of k steps each (so both see the same machine noise),
after a warm-up; the table gives the median over the blocks.  ``torch.set_num_threads`` is
set to the thread count of the BLAS the compiled step calls (`codegen.blas.choice`: NumPy's
bundled OpenBLAS, else SciPy's).

FLOP floor: the step's matrix products, 2·N·Σ in·out forward and 2·N·Σ in·out for the weight
gradients, plus 2·N·in·out for each layer's input gradient except the first (the batch needs
none, in symnet or PyTorch); elementwise work ignored.  Divided by the best float32 GEMM rate
measured in the same run (1024×1024).

Cold compile / cache load: two fresh processes sharing one empty ``SYMNET_CACHE_DIR``; each
times ``sn.compile`` through the first step returning.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (set on some machines for old OpenBLAS
builds) slow a current OpenBLAS: this script drops both from its own environment (and its
subprocesses') before NumPy loads, and reports which kernel threadpoolctl then sees.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_DROPPED_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny iteration counts")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--threads", type=int, default=None,
                   help="set OpenBLAS, Numba, OpenMP and torch to this many threads "
                        "(default: leave the libraries' own defaults, torch matched to BLAS)")
    p.add_argument("--no-parallel", action="store_true", help="skip the parallel=True rows")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the cold-compile / cache-load subprocesses")
    p.add_argument("--batches", metavar="LIST",
                   help="only the rows of these batch sizes, e.g. 256,4096")
    return p.parse_args(argv)


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None:  # before NumPy / Numba / torch load
    for _var in _THREAD_VARS:
        os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mlp import symnet_mlp, symnet_optimizer, torch_mlp  # noqa: E402

from codegen import blas as step_blas  # noqa: E402  (which BLAS the step's products call)

# ------------------------------------------------------------------------------------------
# the cold-compile / cache-load child: kept as source so it runs in a fresh interpreter
# ------------------------------------------------------------------------------------------
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import symnet as sn
t1 = time.perf_counter()
sizes, optimizer, batch = json.loads(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from mlp import symnet_mlp, symnet_optimizer
model = symnet_mlp(sizes)
opt = symnet_optimizer(optimizer, model.parameters())
rng = np.random.default_rng(0)
X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
y = rng.integers(0, sizes[-1], batch)
t2 = time.perf_counter()
step = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False)
t3 = time.perf_counter()
loss = step(X, y)
t4 = time.perf_counter()
loss = step(X, y)
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "compile_call_s": t3 - t2, "first_step_s": t4 - t3,
                  "total_s": t4 - t2, "second_step_s": t5 - t4, "loss": loss}))
"""


# ------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------
def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads",
            "threading_layer", "architecture", "filepath")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def blas_threads(info: list[dict]) -> int | None:
    """Threads of the BLAS the compiled step calls (`codegen.blas.choice`)."""
    folder = "numpy.libs" if step_blas.choice() == "numpy-openblas64" else "scipy.libs"
    libraries = [d for d in info if d.get("user_api") == "blas"]
    chosen = [d for d in libraries if folder in str(d.get("filepath"))] or libraries
    return chosen[0]["num_threads"] if chosen else None


def gemm_rates(quick: bool) -> dict:
    """Float32 GEMM GFLOP/s on 1024×1024: numpy, SciPy's BLAS (Numba's), torch."""
    import scipy.linalg.blas as sblas
    import torch

    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    af, bf = np.asfortranarray(a), np.asfortranarray(b)
    reps = 3 if quick else 15
    cases = {"numpy_np_dot": lambda: np.dot(a, b, out=out),
             "scipy_sgemm": lambda: sblas.sgemm(1.0, af, bf),
             "torch_mm": lambda: torch.mm(at, bt)}
    rates = {}
    for name, f in cases.items():
        for _ in range(2):
            f()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        rates[name] = 2 * n ** 3 / float(np.median(times)) / 1e9
    return rates


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def symnet_step(sizes, optimizer, parallel):
    import symnet as sn

    model = symnet_mlp(sizes)
    opt = symnet_optimizer(optimizer, model.parameters())
    return model, sn.compile(model, sn.CrossEntropyLoss(), opt, parallel=parallel,
                             check_finite=False)


def torch_step(sizes, optimizer, sn_model, X, y):
    """PyTorch eager with symnet's initial weights; returns a zero-argument step."""
    import torch
    import torch.nn.functional as F

    model, opt = torch_mlp(torch, sizes, sn_model, optimizer)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
def _block(f, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        f()
    return (time.perf_counter() - t) / k


def _steps_per_block(f, block_s: float, warmup_s: float) -> tuple[int, float]:
    """Warm ``f`` up for about ``warmup_s`` (at least 3 calls); k so a block takes block_s."""
    f()
    f()
    start, calls = time.perf_counter(), 0
    while True:
        f()
        calls += 1
        spent = time.perf_counter() - start
        if spent >= warmup_s:
            break
    per = spent / calls
    return max(1, round(block_s / per)), per


def interleaved(fs: dict, blocks: int, block_s: float, warmup_s: float,
                budget_s: float | None = None, min_blocks: int | None = None) -> dict:
    """Median seconds per call of each function, timed in alternating blocks.

    With ``budget_s``, a pathologically slow row runs fewer blocks (never below
    ``min_blocks``) so the whole run stays bounded.
    """
    calibrated = {name: _steps_per_block(f, block_s, warmup_s) for name, f in fs.items()}
    ks = {name: k for name, (k, _) in calibrated.items()}
    if budget_s is not None:
        round_s = sum(k * per for k, per in calibrated.values())
        blocks = max(min_blocks or 1, min(blocks, int(budget_s / round_s)))
    samples = {name: [] for name in fs}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for b in range(blocks):
            order = list(fs) if b % 2 == 0 else list(fs)[::-1]
            for name in order:
                samples[name].append(_block(fs[name], ks[name]))
    finally:
        if enabled:
            gc.enable()
    return {name: {"median_s": float(np.median(s)), "min_s": float(np.min(s)),
                   "q1_s": float(np.percentile(s, 25)), "q3_s": float(np.percentile(s, 75)),
                   "k": ks[name], "blocks": len(s)} for name, s in samples.items()}


def flops(sizes, batch: int) -> int:
    """The step's GEMM FLOPs: forward, weight gradients, and input gradients of every layer
    but the first."""
    layers = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return batch * (4 * sum(layers) + 2 * sum(layers[1:]))


# ------------------------------------------------------------------------------------------
# compile times
# ------------------------------------------------------------------------------------------
def compile_times(sizes, optimizer: str, batch: int) -> dict:
    """Cold compile (empty cache) then cache load (same cache), each in a fresh process."""
    arg = json.dumps([list(sizes), optimizer, batch])
    out = {}
    with tempfile.TemporaryDirectory(prefix="symnet-bench-cache-") as cache:
        env = dict(os.environ, SYMNET_CACHE_DIR=cache)
        for phase in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", _CHILD, arg, str(HERE)], env=env,
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"compile-time child failed:\n{proc.stderr}")
            out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def _us(s: float) -> str:
    us = s * 1e6
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    return f"{us:,.1f} µs"


def main() -> int:
    args = ARGS or _parse()
    t_start = time.perf_counter()
    import numba
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS Numba's np.dot calls)
    import torch

    import symnet as sn

    info = blas_info()
    threads = args.threads or blas_threads(info) or numba.config.NUMBA_NUM_THREADS
    torch.set_num_threads(threads)

    quick = args.quick
    blocks = 3 if quick else 31
    block_s = 0.002 if quick else 0.015
    warmup_s = 0.01 if quick else 0.15

    rates_before = gemm_rates(quick)

    small, big = (784, 128, 10), (784, 512, 512, 10)
    configs = [(small, o, b, False) for o in ("SGD", "Adam") for b in (1, 32, 256, 4096)]
    configs += [(big, o, 256, False) for o in ("SGD", "Adam")]
    parallel_note = ""
    if numba.config.NUMBA_NUM_THREADS < 2:
        parallel_note = "parallel=True rows skipped: Numba has a single thread"
    elif not args.no_parallel:
        configs += [(small, o, b, True) for o in ("SGD", "Adam") for b in (256, 4096)]
        configs += [(big, o, 256, True) for o in ("SGD", "Adam")]
    if quick:  # a few rows smoke-test every code path
        configs = [c for c in configs if c[2] in (1, 32) or (c[2] == 256 and c[1] == "SGD"
                                                             and not (c[3] and c[0] == big))]
    if args.batches:
        configs = [c for c in configs if c[2] in {int(b) for b in args.batches.split(",")}]

    load_before = load_average()
    rows = []
    for sizes, optimizer, batch, parallel in configs:
        rng = np.random.default_rng(batch)
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch).astype(np.int64)
        t0 = time.perf_counter()
        sn_model, sn_step = symnet_step(sizes, optimizer, parallel)
        th_step = torch_step(sizes, optimizer, sn_model, X, y)
        first_sn, first_th = float(sn_step(X, y)), float(th_step().detach())
        setup_s = time.perf_counter() - t0
        # parallel rows are extras: a pathological one may run fewer blocks (at least 5)
        timing = interleaved({"symnet": lambda f=sn_step, a=X, b=y: f(a, b), "torch": th_step},
                             blocks, block_s, warmup_s,
                             budget_s=(4 if quick else 20) if parallel else None,
                             min_blocks=min(blocks, 5))
        fl = flops(sizes, batch)
        row = {"model": "-".join(map(str, sizes)), "optimizer": optimizer, "batch": batch,
               "parallel": parallel, "symnet_s": timing["symnet"]["median_s"],
               "torch_s": timing["torch"]["median_s"],
               "speedup": timing["torch"]["median_s"] / timing["symnet"]["median_s"],
               "flops": fl, "timing": timing, "setup_s": setup_s,
               "first_loss": {"symnet": first_sn, "torch": first_th}}
        rows.append(row)
        print(f"  measured {row['model']} {optimizer:4s} N={batch:<5d} "
              f"{'parallel' if parallel else 'serial  '}: symnet {_us(row['symnet_s'])}, "
              f"torch {_us(row['torch_s'])}", file=sys.stderr, flush=True)
    load_after = load_average()
    rates_after = gemm_rates(quick)
    rates = {k: max(rates_before[k], rates_after[k]) for k in rates_before}
    # the floor: the best float32 GEMM rate this machine showed in this run (np.dot,
    # SciPy's sgemm and torch.mm, before and after the rows): under load one library's
    # measurement can land in a busy moment, and a floor must not be slower than reality
    gemm = max(rates.values()) * 1e9
    for r in rows:
        r["floor_s"] = r["flops"] / gemm

    compiles = {}
    if not args.no_compile:
        wanted = [("SGD",), ("Adam",)] if not quick else [("Adam",)]
        for (optimizer,) in wanted:
            compiles[f"784-128-10 {optimizer} N=32"] = compile_times(small, optimizer, 32)
            print(f"  measured compile times for {optimizer}", file=sys.stderr, flush=True)

    # ---- print -------------------------------------------------------------------------
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none started"
    serial = {(r["model"], r["optimizer"], r["batch"]): r for r in rows if not r["parallel"]}
    print("## symnet train step vs PyTorch eager (float32, median of "
          f"{blocks} interleaved blocks{' — QUICK smoke run' if quick else ''})\n")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average before/after: {load_before} / {load_after}")
    print(f"- versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, numba {numba.__version__}, torch {torch.__version__}, "
          f"symnet {sn.__version__}")
    print(f"- the step's products: {step_blas.choice()} (codegen/blas.py; SYMNET_BLAS="
          f"{os.environ.get('SYMNET_BLAS', 'auto')})")
    print(f"- threads: torch.set_num_threads({threads}); NUMBA_NUM_THREADS="
          f"{numba.config.NUMBA_NUM_THREADS} (threading layer used by parallel=True: "
          f"{layer}); torch.get_num_threads()={torch.get_num_threads()}"
          + (f"; --threads {args.threads} set {', '.join(_THREAD_VARS)}" if args.threads
             else ""))
    blas = [d for d in info if d.get("user_api") == "blas"]
    for d in blas:
        path = str(d.get("filepath"))
        lib = os.path.basename(path)
        owner = ("SciPy's: Numba's np.dot calls it" if "scipy.libs" in path else
                 "NumPy's: np.dot, and the step's products under SYMNET_BLAS=auto"
                 if "numpy.libs" in path else "")
        print(f"- BLAS (threadpoolctl{', ' + owner if owner else ''}): "
              f"{d.get('internal_api')} {d.get('version')} "
              f"[{lib}] architecture={d.get('architecture')} threads={d.get('num_threads')} "
              f"({d.get('threading_layer')})")
    if not blas:
        print(f"- BLAS: {info}")
    print(f"- torch BLAS: {'MKL' if torch.backends.mkl.is_available() else 'no MKL'}, "
          f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}")
    print(f"- dropped from the environment: {_DROPPED_ENV or 'nothing (none was set)'}")
    busy = max((load_before or [0])[0], (load_after or [0])[0])
    if busy > (os.cpu_count() or 1) * 0.75:
        print(f"- WARNING: load average {busy} on {os.cpu_count()} CPUs: other processes "
              "share the cores; multi-threaded timings are unreliable, compare ratios "
              "(and a --threads 1 run)")
    print(f"- float32 GEMM 1024×1024, GFLOP/s (median of reps; before / after the rows): "
          f"np.dot {rates_before['numpy_np_dot']:.1f} / {rates_after['numpy_np_dot']:.1f}; "
          f"SciPy sgemm (the BLAS Numba calls) {rates_before['scipy_sgemm']:.1f} / "
          f"{rates_after['scipy_sgemm']:.1f}; torch.mm {rates_before['torch_mm']:.1f} / "
          f"{rates_after['torch_mm']:.1f}. FLOP floor = FLOPs / best of these = "
          f"{gemm / 1e9:.1f} GFLOP/s")
    print()
    print("| model | optimizer | batch | symnet mode | symnet | PyTorch eager | speedup "
          "(torch/symnet) | FLOP floor | symnet / floor |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        few = r["timing"]["symnet"]["blocks"] < blocks
        print(f"| {r['model']} | {r['optimizer']} | {r['batch']} | "
              f"{'parallel=True' if r['parallel'] else 'serial'}"
              f"{' (' + str(r['timing']['symnet']['blocks']) + ' blocks)' if few else ''} | "
              f"{_us(r['symnet_s'])} | "
              f"{_us(r['torch_s'])} | {r['speedup']:.2f}× | {_us(r['floor_s'])} | "
              f"{r['symnet_s'] / r['floor_s']:.1f}× |")
    par = [r for r in rows if r["parallel"]]
    if parallel_note:
        print(f"\n{parallel_note}")
    if par:
        print("\nparallel=True vs serial symnet (serial time / parallel time; >1 = parallel "
              "helps):")
        for r in par:
            s = serial.get((r["model"], r["optimizer"], r["batch"]))
            if s:
                print(f"- {r['model']} {r['optimizer']} N={r['batch']}: "
                      f"{s['symnet_s'] / r['symnet_s']:.2f}× ({_us(s['symnet_s'])} → "
                      f"{_us(r['symnet_s'])})")
    if compiles:
        print("\n| step compiled | phase | sn.compile | first step | sn.compile → first step "
              "returns | import symnet |")
        print("|---|---|---:|---:|---:|---:|")
        for name, c in compiles.items():
            for phase, label in (("cold", "cold (empty cache)"), ("cached", "cache load")):
                d = c[phase]
                print(f"| {name} | {label} | {d['compile_call_s']:.2f} s | "
                      f"{d['first_step_s']:.2f} s | **{d['total_s']:.2f} s** | "
                      f"{d['import_s']:.2f} s |")
    worst = max(abs(r["first_loss"]["symnet"] - r["first_loss"]["torch"]) for r in rows)
    print(f"\nsanity: same initial weights and batch give first-step losses within "
          f"{worst:.2e} (symnet vs torch)")
    total = time.perf_counter() - t_start
    print(f"whole run: {total:.0f} s")

    if args.json:
        result = {"quick": quick, "blocks": blocks, "threads": threads,
                  "numba_threads": numba.config.NUMBA_NUM_THREADS, "numba_threading_layer": layer,
                  "torch_threads": torch.get_num_threads(), "blas": info,
                  "dropped_env": _DROPPED_ENV, "gemm_gflops": rates,
                  "floor_gflops": gemm / 1e9,
                  "gemm_gflops_before": rates_before, "gemm_gflops_after": rates_after,
                  "load_average": {"before": load_before, "after": load_after},
                  "versions": {"python": platform.python_version(), "numpy": np.__version__,
                               "scipy": scipy.__version__, "numba": numba.__version__,
                               "torch": torch.__version__, "symnet": sn.__version__},
                  "rows": rows, "compile": compiles, "run_s": total}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
