"""Median time of one fused training step: symnet vs JAX jit and PyTorch eager, on one core
and on the default threads, against the FLOP floor.

Usage:
    .venv/bin/python benchmarks/train_step.py                  # full run (~4 min on 2 cores)
    .venv/bin/python benchmarks/train_step.py --quick          # smoke run (< 90 s)
    .venv/bin/python benchmarks/train_step.py --batches 256 --rounds 1
    .venv/bin/python benchmarks/train_step.py --json out.json  # also write every measurement
    .venv/bin/python benchmarks/train_step.py --flush-denormal # PyTorch flushes denormals too
    .venv/bin/python benchmarks/train_step.py --ieee-denormals # symnet keeps them (IEEE)
    .venv/bin/python benchmarks/train_step.py --models 784-128-10 --optimizers Adam \\
        --libraries symnet,torch --modes default --no-compile

Rows: 784-128-10 (ReLU, cross-entropy on integer labels, float32) with SGD (lr 0.01) and
Adam (lr 1e-3) at batch 1, 32, 256, 4096, and 784-512-512-10 at batch 256.  Every contestant
starts from symnet's initial weights (``mlp.py``) and trains on the same fixed batch:

- symnet: ``sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False)`` (PyTorch and
  JAX check nothing either; ``parallel`` left at sn.compile's default), called as
  ``step(X, y)``;
- PyTorch eager: ``zero_grad``; ``cross_entropy``; ``backward``; ``opt.step()``
  (torch.optim with its default ``foreach``; ``torch.set_num_threads`` untouched);
- JAX jit, as JAX's docs write a training step (``mlp.jax_mlp``): ``jax.value_and_grad`` of
  the mean cross-entropy and the SGD or Adam update (torch.optim.Adam's defaults, step count
  in the state) inside ONE ``jax.jit`` that donates the parameters and optimizer state; the
  batch is put on the device once.  A timing block ends with ``block_until_ready()`` on the
  last step's results, so asynchronous dispatch is paid for.

Process per library: each measurement is a fresh child process that runs ONE library (all
the selected rows, in order).  In one process a library's idle thread pool (OpenBLAS's
workers, PyTorch's OpenMP team, XLA's Eigen pool) keeps spinning after its block and takes
cores from the next library's block, so every multi-threaded number comes out slow.  In
every row a child builds the step, runs 5 steps (their losses, step 1 and 5, are the
sanity check: the three libraries must agree within a relative 1e-3), warms up for about
0.3 s, then times ``--blocks`` blocks of k steps (k so a block lasts about 30 ms) and reports
the median per-step time of the blocks.  ``--rounds`` rounds: in each, for each thread mode,
one child per library, in an order that rotates; the table gives the median over rounds
(the JSON keeps each round's value).

Thread modes:

- "1 core": the child runs under ``taskset -c <first allowed CPU>`` (thread variables do not
  bind every library: XLA ignores them) with OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS,
  OMP_NUM_THREADS and MKL_NUM_THREADS = 1; without ``taskset``, only the variables (the
  output says so);
- "default": none of those variables (removed if this process has them), no taskset: what a
  user gets out of the box.

Noise: for every child the parent also measures how many cores other processes kept busy
meanwhile (``/proc/stat``'s busy time less the child's own CPU time), and names the children
over 0.25 cores and the cells whose rounds differ by more than 1.3×.  A multi-threaded
OpenBLAS or OpenMP step sharing its cores with another busy process slowed down 70–400× on
the project's 2-core machine (0.1 ms → 40 ms, in multiples of a 4 ms scheduler tick: each
product apparently waits for a descheduled worker), so read the default columns only from
a run without such notes.

FLOP floor: the step's matrix products, 2·N·Σ in·out forward and 2·N·Σ in·out for the weight
gradients, plus 2·N·in·out for each layer's input gradient except the first (the batch needs
none); elementwise work ignored.  Divided by the best float32 GEMM rate (1024×1024 ``np.dot``,
NumPy's bundled OpenBLAS, the one the symnet step calls) measured at the start of each child
of that mode, before its library runs: the 1-core floor uses the 1-core rate.

Cold compile / cache load (``--no-compile`` skips it): two fresh processes sharing one empty
``SYMNET_CACHE_DIR``; each times ``sn.compile`` through the first step returning.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (set on some machines for old OpenBLAS
builds) slow a current OpenBLAS: this script drops both from its own environment (and its
children's) before NumPy loads, and reports which kernel threadpoolctl then sees.

JAX and PyTorch are optional (``pip install -e '.[bench]'``); a missing one shows as "—".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no other-process accounting
    resource = None

_DROPPED_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS")
HERE = Path(__file__).resolve().parent
LIBRARIES = ("symnet", "jax", "torch")
LABEL = {"symnet": "symnet", "jax": "JAX jit", "torch": "PyTorch"}
MODES = ("one", "default")
MODE_LABEL = {"one": "1 core", "default": "default"}
MODELS = {"784-128-10": (784, 128, 10), "784-512-512-10": (784, 512, 512, 10)}
OPTIMIZERS = ("SGD", "Adam")
INSTALL = "pip install -e '.[bench]'"
LOSS_RTOL = 1e-3
CHECK_STEPS = 5  # steps before timing whose losses (1st and last) the parent compares
BUSY_CORES = 0.25  # other processes' average load during a child that the report names
UNSTABLE = 1.3  # a cell whose rounds differ by more than this factor is named too


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 3 blocks, batch 1 and 32 only")
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--rounds", type=int, help="rounds of children (default 3, quick 1)")
    p.add_argument("--blocks", type=int, help="timed blocks per row (default 15, quick 3)")
    p.add_argument("--batches", metavar="LIST", help="only these batch sizes, e.g. 256,4096")
    p.add_argument("--models", metavar="LIST", help=f"only these of {','.join(MODELS)}")
    p.add_argument("--optimizers", metavar="LIST", help="only these of SGD,Adam")
    p.add_argument("--libraries", metavar="LIST", help=f"only these of {','.join(LIBRARIES)}")
    p.add_argument("--modes", metavar="LIST", help="only these of one,default")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the cold-compile / cache-load subprocesses")
    p.add_argument("--flush-denormal", action="store_true",
                   help="PyTorch flushes denormals to zero too (torch.set_flush_denormal), as "
                        "symnet's step and XLA do by default")
    p.add_argument("--ieee-denormals", action="store_true",
                   help="symnet's step keeps IEEE denormals (sn.compile(..., "
                        "denormals='ieee')), as PyTorch does by default")
    p.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _pick(text: str | None, allowed, what: str) -> list:
    """The comma-separated ``text`` (case-insensitive), checked against ``allowed``."""
    if not text:
        return list(allowed)
    by_lower = {str(a).lower(): a for a in allowed}
    picked = []
    for item in text.split(","):
        if item.strip().lower() not in by_lower:
            raise SystemExit(f"train_step.py: unknown {what} {item!r}; expected one of "
                             f"{', '.join(map(str, allowed))}")
        picked.append(by_lower[item.strip().lower()])
    return picked


def select_configs(args: argparse.Namespace) -> list[dict]:
    configs = [{"model": "784-128-10", "optimizer": o, "batch": b}
               for o in OPTIMIZERS for b in (1, 32, 256, 4096)]
    configs += [{"model": "784-512-512-10", "optimizer": o, "batch": 256} for o in OPTIMIZERS]
    models = _pick(args.models, MODELS, "model")
    optimizers = _pick(args.optimizers, OPTIMIZERS, "optimizer")
    batches = ({int(b) for b in args.batches.split(",")} if args.batches
               else {1, 32} if args.quick else None)
    return [dict(c, sizes=list(MODELS[c["model"]])) for c in configs
            if c["model"] in models and c["optimizer"] in optimizers
            and (batches is None or c["batch"] in batches)]


def config_key(c: dict) -> str:
    return f"{c['model']} {c['optimizer']} N={c['batch']}"


# ------------------------------------------------------------------------------------------
# the cold-compile / cache-load child: kept as source so it runs in a fresh interpreter
# ------------------------------------------------------------------------------------------
_COMPILE_CHILD = r"""
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


def compile_times(sizes, optimizer: str, batch: int) -> dict:
    """Cold compile (empty cache) then cache load (same cache), each in a fresh process."""
    arg = json.dumps([list(sizes), optimizer, batch])
    out = {}
    with tempfile.TemporaryDirectory(prefix="symnet-bench-cache-") as cache:
        env = dict(os.environ, SYMNET_CACHE_DIR=cache)
        for phase in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, arg, str(HERE)],
                                  env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"compile-time child failed:\n{proc.stderr}")
            out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------
# child: one library, every selected row
# ------------------------------------------------------------------------------------------
Step = Callable[[], object]


def _batch(c: dict):
    import numpy as np

    rng = np.random.default_rng(c["batch"])
    X = rng.standard_normal((c["batch"], c["sizes"][0])).astype(np.float32)
    y = rng.integers(0, c["sizes"][-1], c["batch"]).astype(np.int64)
    return X, y


#: symnet's ``denormals`` (``--ieee-denormals``: "ieee")
DENORMALS = ["auto"]


def build_symnet(c: dict, X, y) -> tuple[Step, Callable[[object], None]]:
    from mlp import symnet_mlp, symnet_optimizer

    import symnet as sn

    model = symnet_mlp(c["sizes"])
    opt = symnet_optimizer(c["optimizer"], model.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt, check_finite=False,
                      denormals=DENORMALS[0])
    return (lambda: step(X, y)), (lambda last: None)


def build_torch(c: dict, X, y) -> tuple[Step, Callable[[object], None]]:
    import torch
    from mlp import symnet_mlp, torch_mlp, torch_step

    model, opt = torch_mlp(torch, c["sizes"], symnet_mlp(c["sizes"]), c["optimizer"])
    return torch_step(model, opt, torch.from_numpy(X), torch.from_numpy(y)), (lambda last: None)


def build_jax(c: dict, X, y) -> tuple[Step, Callable[[object], None]]:
    import jax
    import numpy as np
    from mlp import jax_mlp, symnet_mlp

    params, state, update = jax_mlp(jax, symnet_mlp(c["sizes"]), c["optimizer"])
    Xj, yj = jax.device_put(X), jax.device_put(y.astype(np.int32))
    carry = [params, state]

    def step():
        carry[0], carry[1], loss = update(carry[0], carry[1], Xj, yj)
        return loss

    return step, (lambda last: jax.block_until_ready((last, carry)))


BUILD = {"symnet": build_symnet, "torch": build_torch, "jax": build_jax}


def _loss(value) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def time_config(library: str, c: dict, spec: dict) -> dict:
    """Build one row's step, check its first losses, warm it up, time it in blocks."""
    X, y = _batch(c)
    t0 = time.perf_counter()
    step, sync = BUILD[library](c, X, y)
    losses = [_loss(step()) for _ in range(CHECK_STEPS)]
    build_s = time.perf_counter() - t0
    start, calls, last = time.perf_counter(), 0, None
    while calls < 3 or time.perf_counter() - start < spec["warmup_s"]:
        last = step()
        calls += 1
    sync(last)
    k = max(1, round(spec["block_s"] / ((time.perf_counter() - start) / calls)))
    times = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(spec["blocks"]):
            t = time.perf_counter()
            for _ in range(k):
                last = step()
            sync(last)
            times.append((time.perf_counter() - t) / k)
    finally:
        if enabled:
            gc.enable()
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"key": config_key(c), "median_s": statistics.median(times), "min_s": min(times),
            "q1_s": q[0], "q3_s": q[2], "k": k, "blocks": len(times), "build_s": build_s,
            "loss_step1": losses[0], f"loss_step{CHECK_STEPS}": losses[-1]}


def gemm_gflops(reps: int) -> float:
    """Best float32 1024×1024 ``np.dot`` rate (GFLOP/s) of ``reps`` calls after 2 warm-ups."""
    import numpy as np

    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    for i in range(reps + 2):
        t = time.perf_counter()
        np.dot(a, b, out=out)
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def import_library(library: str) -> dict:
    """Import ``library`` (ImportError if missing); its versions."""
    import numpy as np

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if library == "symnet":
        import llvmlite
        import numba
        import scipy

        import symnet as sn
        versions.update(symnet=sn.__version__, numba=numba.__version__,
                        llvmlite=llvmlite.__version__, scipy=scipy.__version__)
    elif library == "torch":
        import torch
        versions.update(torch=torch.__version__)
    else:
        import jax
        import jaxlib
        versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
    return versions


def blas_pools() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS / OpenMP libraries."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads",
            "threading_layer", "architecture")
    return [{**{k: d.get(k) for k in keep}, "file": os.path.basename(str(d.get("filepath"))),
             "numpy_bundled": "numpy.libs" in str(d.get("filepath"))
             or ".dylibs" in str(d.get("filepath"))}
            for d in threadpool_info()]


def thread_report(library: str) -> dict:
    """The thread counts this child's library actually used."""
    pools = blas_pools()
    numpy_blas = [d for d in pools if d.get("numpy_bundled") and d.get("user_api") == "blas"]
    out: dict = {"pools": pools,
                 "openblas_numpy": numpy_blas[0]["num_threads"] if numpy_blas else None,
                 "affinity_cpus": (len(os.sched_getaffinity(0))
                                   if hasattr(os, "sched_getaffinity") else None),
                 "os_threads": (len(os.listdir("/proc/self/task"))
                                if os.path.isdir("/proc/self/task") else None)}
    if library == "symnet":
        import numba

        from codegen import blas
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel ran
            layer = "none"
        out.update(numba=numba.get_num_threads(), numba_threading_layer=layer,
                   step_blas=blas.choice())
    elif library == "torch":
        import torch

        out.update(torch=torch.get_num_threads(), torch_interop=torch.get_num_interop_threads(),
                   mkl=torch.backends.mkl.is_available(),
                   mkldnn=torch.backends.mkldnn.is_available())
    else:
        import jax

        out.update(xla="XLA picks its own", devices=[str(d) for d in jax.devices()])
    return out


def child_main(library: str, spec: dict) -> dict:
    sys.path.insert(0, str(HERE))
    try:
        versions = import_library(library)
    except ImportError as e:
        return {"missing": f"{type(e).__name__}: {e}"}
    rate = gemm_gflops(spec["gemm_reps"])  # before the library's own pools start
    if spec.get("ieee_denormals") and library == "symnet":
        DENORMALS[0] = "ieee"
    elif spec.get("flush_denormal") and library == "torch":
        import torch

        torch.set_flush_denormal(True)
    rows = [time_config(library, c, spec) for c in spec["configs"]]
    return {"versions": versions, "gemm_gflops": rate, "rows": rows,
            "threads": thread_report(library),
            "env": {v: os.environ.get(v) for v in THREAD_VARS}}


# ------------------------------------------------------------------------------------------
# parent: the children, mode by mode
# ------------------------------------------------------------------------------------------
def taskset_cpu() -> int | None:
    """The CPU the 1-core children are pinned to (None: no taskset)."""
    if shutil.which("taskset") is None:
        return None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else {0}
    return min(allowed)


def child_command(library: str, mode: str, spec: dict, cpu: int | None
                  ) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    prefix: list[str] = []
    if mode == "one":
        env.update({v: "1" for v in THREAD_VARS})
        if cpu is not None:
            prefix = ["taskset", "-c", str(cpu)]
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child", library,
               "--spec", json.dumps(spec)]
    return command, env


def busy_cpu_s() -> float | None:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``; steal,
    another virtual machine's time on these cores, counts as busy); None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def children_cpu_s() -> float:
    if resource is None:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(library: str, mode: str, spec: dict, cpu: int | None) -> dict:
    """One child's results (`run_json`)."""
    command, env = child_command(library, mode, spec, cpu)
    return run_json(command, env, f"train_step.py: the {LABEL[library]} child "
                                  f"({MODE_LABEL[mode]})")


def run_json(command: list[str], env: dict, what: str) -> dict:
    """The JSON last line a child prints, its ``wall_s``, and ``other_cores``: how many
    cores other processes kept busy on average meanwhile (the machine's busy time less the
    child's own).  ``what`` names the child if it fails."""
    t, busy, own = time.perf_counter(), busy_cpu_s(), children_cpu_s()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800,
                          check=False)
    wall, busy_after = time.perf_counter() - t, busy_cpu_s()
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    out["other_cores"] = (None if busy is None or busy_after is None else
                          max(0.0, (busy_after - busy - (children_cpu_s() - own)) / wall))
    return out


def rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def run_all(libraries: list[str], modes: list[str], rounds: int, spec: dict,
            cpu: int | None) -> tuple[list[dict], dict]:
    runs, missing = [], {}
    for r in range(rounds):
        for m, mode in enumerate(modes):
            order = rotated(libraries, r * len(modes) + m)
            for position, library in enumerate(order):
                if library in missing:
                    continue
                out = run_child(library, mode, spec, cpu)
                if "missing" in out:
                    missing[library] = out["missing"]
                    print(f"  {LABEL[library]} is not importable ({out['missing']}): its "
                          f"columns show '—'; {INSTALL}", file=sys.stderr, flush=True)
                    continue
                runs.append({**out, "library": library, "mode": mode, "round": r,
                             "position": position})
                other = out["other_cores"]
                print(f"  round {r + 1}/{rounds}, {MODE_LABEL[mode]:7s}, "
                      f"{LABEL[library]:8s}: {out['wall_s']:5.1f} s"
                      + (f" (other processes: {other:.2f} cores)" if other is not None else ""),
                      file=sys.stderr, flush=True)
    return runs, missing


def flops(sizes, batch: int) -> int:
    """The step's GEMM FLOPs: forward, weight gradients, and input gradients of every layer
    but the first."""
    layers = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return batch * (4 * sum(layers) + 2 * sum(layers[1:]))


def summarise(runs: list[dict], configs: list[dict], modes: list[str]) -> dict:
    """Median over rounds per (row, library, mode); per-mode GEMM rate and FLOP floors."""
    rates = {mode: max((r["gemm_gflops"] for r in runs if r["mode"] == mode), default=None)
             for mode in modes}
    raised = bool(rates.get("one") and rates.get("default")
                  and rates["default"] < rates["one"])
    if raised:  # every default child measured under load: more threads are never slower
        rates["default"] = rates["one"]
    rows = []
    for c in configs:
        key = config_key(c)
        row: dict = {**c, "key": key, "flops": flops(c["sizes"], c["batch"]), "times": {},
                     "per_round": {}, "floor_s": {}}
        for mode in modes:
            if rates[mode]:
                row["floor_s"][mode] = row["flops"] / (rates[mode] * 1e9)
            for library in LIBRARIES:
                per_round = [x for r in runs if r["library"] == library and r["mode"] == mode
                             for x in r["rows"] if x["key"] == key]
                if per_round:
                    name = f"{library}/{mode}"
                    row["per_round"][name] = per_round
                    row["times"][name] = statistics.median(x["median_s"] for x in per_round)
        rows.append(row)
    return {"gemm_gflops": rates, "default_rate_raised": raised, "rows": rows}


def sanity(runs: list[dict]) -> tuple[float, list[str], int]:
    """Worst relative loss difference from symnet's (or the first library's) first run, the
    disagreements over LOSS_RTOL, and how many libraries were compared."""
    libraries = [lib for lib in LIBRARIES if any(r["library"] == lib for r in runs)]
    if len(libraries) < 2:
        return 0.0, [], len(libraries)
    reference = next(r for r in runs if r["library"] == libraries[0])
    ref = {x["key"]: x for x in reference["rows"]}
    worst, bad = 0.0, []
    for r in runs:
        for x in r["rows"]:
            for field in ("loss_step1", f"loss_step{CHECK_STEPS}"):
                a, b = ref[x["key"]][field], x[field]
                diff = abs(a - b) / max(abs(a), abs(b), 1e-30)
                if not diff <= LOSS_RTOL:  # NaN too
                    bad.append(f"{x['key']} {field}: {LABEL[libraries[0]]} {a:.7g} vs "
                               f"{LABEL[r['library']]} ({MODE_LABEL[r['mode']]}, round "
                               f"{r['round'] + 1}) {b:.7g}")
                worst = max(worst, diff) if diff == diff else float("inf")
    return worst, bad, len(libraries)


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def _us(s: float | None) -> str:
    if s is None:
        return "—"
    us = s * 1e6
    return f"{us / 1000:,.1f} ms" if us >= 10_000 else f"{us:,.1f} µs"


def _vs_peer(row: dict, mode: str) -> str:
    ours = row["times"].get(f"symnet/{mode}")
    peers = [row["times"][f"{lib}/{mode}"] for lib in ("jax", "torch")
             if f"{lib}/{mode}" in row["times"]]
    if ours is None or not peers:
        return "—"
    ratio = min(peers) / ours
    return f"**{ratio:.2f}× ✓**" if ratio >= 1.0 else f"{ratio:.2f}×"


def print_table(summary: dict, modes: list[str]) -> None:
    cols = [f"{LABEL[lib]} {MODE_LABEL[m]}" for m in MODES for lib in LIBRARIES]
    cols += [f"symnet vs best peer, {MODE_LABEL[m]}" for m in MODES]
    cols += [f"FLOP floor {MODE_LABEL[m]}" for m in MODES] + ["symnet / floor (default)"]
    print("| model | optimizer | batch | " + " | ".join(cols) + " |")
    print("|---|---|---:|" + "---:|" * len(cols))
    for row in summary["rows"]:
        t = row["times"]
        cells = [_us(t.get(f"{lib}/{m}")) for m in MODES for lib in LIBRARIES]
        cells += [_vs_peer(row, m) for m in MODES]
        cells += [_us(row["floor_s"].get(m)) for m in MODES]
        ours, floor = t.get("symnet/default"), row["floor_s"].get("default")
        cells.append(f"{ours / floor:.1f}×" if ours and floor else "—")
        print(f"| {row['model']} | {row['optimizer']} | {row['batch']} | "
              + " | ".join(cells) + " |")
    skipped = [MODE_LABEL[m] for m in MODES if m not in modes]
    if skipped:
        print(f"\n(mode not run: {', '.join(skipped)})")


def noise_notes(runs: list[dict], summary: dict) -> list[str]:
    """The children that shared the machine with other processes, and the cells whose
    rounds disagree (the median over rounds hides a minority of bad rounds, not more)."""
    notes = []
    busy = [r for r in runs if (r.get("other_cores") or 0) > BUSY_CORES]
    if busy:
        notes.append(f"other processes kept more than {BUSY_CORES} cores busy during: "
                     + ", ".join(f"round {r['round'] + 1} {MODE_LABEL[r['mode']]} "
                                 f"{LABEL[r['library']]} ({r['other_cores']:.2f})"
                                 for r in busy))
    for row in summary["rows"]:
        for name, per_round in row["per_round"].items():
            values = [x["median_s"] for x in per_round]
            if len(values) > 1 and max(values) > UNSTABLE * min(values):
                library, mode = name.split("/")
                notes.append(f"rounds disagree: {row['key']} {LABEL[library]} "
                             f"{MODE_LABEL[mode]}: {' / '.join(_us(v) for v in values)}")
    return notes


def _first(runs: list[dict], library: str, mode: str) -> dict | None:
    return next((r for r in runs if r["library"] == library and r["mode"] == mode), None)


def thread_line(runs: list[dict], mode: str) -> str:
    parts = []
    s, t, j = (_first(runs, lib, mode) for lib in ("symnet", "torch", "jax"))
    if s:
        th = s["threads"]
        parts.append(f"symnet: numba.get_num_threads()={th['numba']}, NumPy's OpenBLAS "
                     f"{th['openblas_numpy']}, numba.threading_layer()="
                     f"{th['numba_threading_layer']}")
    if t:
        th = t["threads"]
        parts.append(f"PyTorch: torch.get_num_threads()={th['torch']} (interop "
                     f"{th['torch_interop']})")
    if j:
        parts.append(f"JAX: XLA picks its own ({j['threads']['os_threads']} OS threads in "
                     f"the process at the end)")
    any_run = s or t or j
    if any_run:
        parts.append(f"CPUs allowed: {any_run['threads']['affinity_cpus']}")
    return "; ".join(parts)


def thread_warnings(runs: list[dict]) -> list[str]:
    """Thread counts that contradict their mode."""
    out = []
    cores = os.cpu_count() or 1
    for r in runs:
        th = r["threads"]
        counts = {k: th.get(k) for k in ("numba", "openblas_numpy", "torch")
                  if th.get(k) is not None}
        for name, n in counts.items():
            if r["mode"] == "one" and n != 1:
                out.append(f"{LABEL[r['library']]} 1 core: {name} used {n} threads")
            if r["mode"] == "default" and n != cores and cores > 1:
                out.append(f"{LABEL[r['library']]} default: {name} used {n} threads of "
                           f"{cores} CPUs")
    return sorted(set(out))


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_header(runs: list[dict], missing: dict, modes: list[str], spec: dict,
                 rounds: int, cpu: int | None, loads: tuple, quick: bool,
                 summary: dict) -> None:
    print("## symnet train step vs JAX jit and PyTorch eager (float32; each library alone "
          f"in its own process; median over {rounds} round(s) of the median of "
          f"{spec['blocks']} blocks{' — QUICK smoke run' if quick else ''}"
          f"{'; PyTorch flushes denormals too' if spec.get('flush_denormal') else ''}"
          f"{'; symnet keeps IEEE denormals' if spec.get('ieee_denormals') else ''})\n")
    print(f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}; load "
          f"average at start / end: {loads[0]} / {loads[1]}")
    versions: dict = {}
    for r in runs:
        versions.update(r["versions"])
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for library, why in missing.items():
        print(f"- **{LABEL[library]} missing** ({why}): {INSTALL}")
    one = ("taskset -c " + str(cpu) if cpu is not None
           else "NO taskset on this machine: only the thread variables")
    print(f"- 1 core: {one}, {', '.join(THREAD_VARS)}=1; default: none of those, no taskset")
    for mode in modes:
        rate = summary["gemm_gflops"].get(mode)
        shown = f"{rate:.1f} GFLOP/s" if rate else "—"
        print(f"- threads, {MODE_LABEL[mode]}: {thread_line(runs, mode)}; float32 GEMM "
              f"1024×1024 np.dot (best in this mode's children): {shown}")
    s = next((r for r in runs if r["library"] == "symnet"), None) or (runs[0] if runs else None)
    if s:
        for d in s["threads"]["pools"]:
            if d.get("user_api") == "blas":
                owner = ("NumPy's: np.dot and the symnet step" if d["numpy_bundled"]
                         else "SciPy's: Numba's np.dot would call it")
                print(f"- BLAS (threadpoolctl{', ' + owner if owner else ''}): "
                      f"{d.get('internal_api')} {d.get('version')} [{d['file']}] "
                      f"architecture={d.get('architecture')} ({d.get('threading_layer')})")
        if "step_blas" in s["threads"]:
            print(f"- the symnet step's products: {s['threads']['step_blas']} "
                  f"(codegen/blas.py; SYMNET_BLAS={os.environ.get('SYMNET_BLAS', 'auto')})")
    print(f"- dropped from the environment: {_DROPPED_ENV or 'nothing (none was set)'}")
    if summary["default_rate_raised"]:
        print("- NOTE: every default child measured a slower GEMM than the 1-core children "
              "(other load); the default floor uses the 1-core rate")
    for w in thread_warnings(runs):
        print(f"- NOTE: {w}")
    busy = max((loads[0] or [0])[0], (loads[1] or [0])[0])
    if busy > (os.cpu_count() or 1) * 0.75:
        print(f"- WARNING: load average {busy} on {os.cpu_count()} CPUs: other processes "
              "share the cores; default-thread timings are unreliable, trust the 1-core "
              "columns and the ratios more")
    print()


def print_compiles(compiles: dict) -> None:
    print("\n| step compiled | phase | sn.compile | first step | sn.compile → first step "
          "returns | import symnet |")
    print("|---|---|---:|---:|---:|---:|")
    for name, c in compiles.items():
        for phase, label in (("cold", "cold (empty cache)"), ("cached", "cache load")):
            d = c[phase]
            print(f"| {name} | {label} | {d['compile_call_s']:.2f} s | "
                  f"{d['first_step_s']:.2f} s | **{d['total_s']:.2f} s** | "
                  f"{d['import_s']:.2f} s |")


def print_sanity(runs: list[dict]) -> dict:
    worst, bad, compared = sanity(runs)
    if compared < 2:
        print("\nsanity: only one library ran; no losses to compare")
    elif bad:
        print(f"\n**SANITY FAILURE: the libraries' losses disagree (relative difference > "
              f"{LOSS_RTOL:g}); a step is wrong and its times mean nothing:**")
        for line in bad:
            print(f"- {line}")
    else:
        print(f"\nsanity: OK, losses of step 1 and step {CHECK_STEPS} (same weights, same "
              f"batch) agree across {compared} libraries, every mode and round: worst "
              f"relative difference {worst:.1e} (< {LOSS_RTOL:g})")
    return {"worst_relative_difference": worst, "disagreements": bad, "libraries": compared}


def main() -> int:
    args = _parse()
    if args.child:
        print(json.dumps(child_main(args.child, json.loads(args.spec))))
        return 0
    t_start = time.perf_counter()
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    configs = select_configs(args)
    libraries = _pick(args.libraries, LIBRARIES, "library")
    modes = _pick(args.modes, MODES, "mode")
    if not configs:
        raise SystemExit("train_step.py: no row matches the filters")
    spec = {"configs": configs, "blocks": args.blocks or (3 if quick else 15),
            "block_s": 0.01 if quick else 0.03, "warmup_s": 0.05 if quick else 0.3,
            "gemm_reps": 3 if quick else 8, "flush_denormal": args.flush_denormal,
            "ieee_denormals": args.ieee_denormals}
    cpu = taskset_cpu()
    load_start = load_average()
    runs, missing = run_all(libraries, modes, rounds, spec, cpu)
    compiles = {}
    if not args.no_compile:
        for optimizer in ("Adam",) if quick else OPTIMIZERS:
            compiles[f"784-128-10 {optimizer} N=32"] = compile_times(MODELS["784-128-10"],
                                                                     optimizer, 32)
            print(f"  measured compile times for {optimizer}", file=sys.stderr, flush=True)
    loads = (load_start, load_average())
    summary = summarise(runs, configs, modes)

    print_header(runs, missing, modes, spec, rounds, cpu, loads, quick, summary)
    print_table(summary, modes)
    notes = noise_notes(runs, summary)
    if notes:
        print("\nNoise (each round's values are in --json):")
        for line in notes:
            print(f"- {line}")
    if compiles:
        print_compiles(compiles)
    checked = print_sanity(runs)
    total = time.perf_counter() - t_start
    print(f"whole run: {total:.0f} s")

    if args.json:
        result = {"quick": quick, "rounds": rounds, "spec": spec, "libraries": libraries,
                  "modes": modes, "taskset_cpu": cpu, "missing": missing,
                  "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                              "platform": platform.platform()},
                  "dropped_env": _DROPPED_ENV,
                  "load_average": {"start": loads[0], "end": loads[1]},
                  "gemm_gflops": summary["gemm_gflops"],
                  "default_rate_raised": summary["default_rate_raised"], "rows": summary["rows"],
                  "runs": runs, "noise": notes, "compile": compiles, "sanity": checked,
                  "run_s": total}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
