"""Median time of one fused training step on a GPU: symnet's CUDA step vs PyTorch CUDA eager.

Usage (on a machine with an NVIDIA GPU, numba's CUDA target and a CUDA build of torch):
    python benchmarks/gpu_step.py --sanity                 # full run (a minute or two)
    python benchmarks/gpu_step.py --sanity --quick         # smoke run: few, short blocks
    python benchmarks/gpu_step.py --json out.json          # also write the results
    python benchmarks/gpu_step.py --simulate --quick       # no GPU: Numba's CUDA simulator,
                                                           # tiny shapes, numbers meaningless

Rows: 784-128-10 and 784-512-512-10 (ReLU, cross-entropy), SGD (lr 0.01) and Adam (lr 1e-3),
batch 256 and 4096, float32.  The symnet side is the API as a user calls it:
``model.to("cuda")``; ``step = sn.compile(model, loss, opt)``; ``step(X, y)`` with host numpy
``X`` and ``y`` (the batch goes in, the loss comes back as a float).  Each row is reported
twice: "step + sync" times blocks of k calls closed by ``numba.cuda.synchronize()``; "step
call only" adds up ``perf_counter`` around each call alone (same blocks).  The PyTorch side
is standard eager: the batch copied from the same host arrays to the GPU every step
(``torch.from_numpy(X).to("cuda")``, pageable memory, as symnet's step copies it);
``zero_grad``; ``cross_entropy``; ``backward``; ``opt.step()`` (torch.optim defaults), with
``torch.cuda.synchronize()`` at block ends; "+ loss.item()" also brings the loss to the host
every step, as symnet's step does.  All contestants start from symnet's initial weights and run
in interleaved blocks (alternating order, after a warm-up); the table gives medians over blocks.
speedup = PyTorch time / symnet time (> 1: symnet faster).

``--sanity`` first checks, for each model, that the first-step loss of the CUDA step equals
the CPU step's (``sn.compile`` of a CPU model holding the same weights) within 1e-4, and
exits 1 if not.  Without a GPU the script exits 2 with one line saying why, unless
``--simulate`` is given: it then sets ``NUMBA_ENABLE_CUDASIM=1`` before Numba loads and runs
tiny shapes (8-4-3 and 8-4-4-3, batch 4 and 8, 2 blocks of 2 steps) to prove the script runs
end to end; if torch has no CUDA there, its side runs on the CPU, only to exercise the code.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # symnet and codegen, uninstalled


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few, short timing blocks")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--sanity", action="store_true",
                   help="first check CUDA step vs CPU step first-step losses (within 1e-4)")
    p.add_argument("--simulate", action="store_true",
                   help="no GPU: Numba's CUDA simulator, tiny shapes (numbers meaningless)")
    return p.parse_args(argv)


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.simulate:  # before anything imports Numba
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp import symnet_mlp, symnet_optimizer, torch_mlp  # noqa: E402

MODELS = {"small": (784, 128, 10), "big": (784, 512, 512, 10)}
BATCHES = (256, 4096)
SIMULATED_MODELS = {"small": (8, 4, 3), "big": (8, 4, 4, 3)}
SIMULATED_BATCHES = (4, 8)
OPTIMIZERS = ("SGD", "Adam")
SANITY_TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------
def _try(f, default="unknown"):
    try:
        return f()
    except Exception as error:  # noqa: BLE001 - a version we can't read is reported, not fatal
        return f"{default} ({type(error).__name__})"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def numba_device(cuda, simulated: bool) -> dict:
    """The card as Numba sees it, with driver, runtime and NVVM versions."""
    if simulated:
        return {"name": "Numba CUDA simulator (no GPU)",
                "implementation": getattr(cuda, "implementation", "unknown")}
    def driver_version():
        from numba.cuda.cudadrv import driver

        return list(driver.driver.get_version())

    def nvvm_version():
        from numba.cuda.cudadrv import nvvm

        return list(nvvm.NVVM().get_version())

    device = cuda.get_current_device()
    return {"name": _text(device.name), "compute_capability": list(device.compute_capability),
            "implementation": getattr(cuda, "implementation", "unknown"),
            "driver_cuda_version": _try(driver_version),
            "runtime_version": _try(lambda: list(cuda.runtime.get_version())),
            "nvvm_version": _try(nvvm_version), "nvidia_smi": nvidia_smi()}


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    out = _try(lambda: subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip())
    return out or "nvidia-smi printed nothing"


def torch_device(simulated: bool):
    """(torch module or None, torch.device or None, why torch CUDA is not used or None)."""
    try:
        import torch
    except ImportError as error:
        return None, None, f"torch is not installed ({error})"
    if torch.cuda.is_available():
        return torch, torch.device("cuda"), None
    why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else
           f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU")
    return torch, (torch.device("cpu") if simulated else None), why


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def batch_of(sizes, batch: int):
    rng = np.random.default_rng(batch)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    return X, rng.integers(0, sizes[-1], batch).astype(np.int64)


def symnet_block(cuda, step, X, y):
    """``run(k)``: k calls of ``step(X, y)``; seconds per step, with and without the sync."""

    def run(k: int) -> dict:
        start, inside = time.perf_counter(), 0.0
        for _ in range(k):
            t = time.perf_counter()
            step(X, y)
            inside += time.perf_counter() - t
        cuda.synchronize()
        return {"step + sync": (time.perf_counter() - start) / k, "step call only": inside / k}

    return run


def torch_block(torch, device, sizes, optimizer: str, sn_model, X, y):
    """``run(k)`` for PyTorch eager from symnet's initial weights, and its first-step loss."""
    import torch.nn.functional as F

    model, opt = torch_mlp(torch, sizes, sn_model, optimizer, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        Xd, yd = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(Xd), yd)
        loss.backward()
        opt.step()
        return loss

    def run(k: int, item: bool) -> float:
        start = time.perf_counter()
        for _ in range(k):
            loss = step()
            if item:
                loss.item()
        sync()
        return (time.perf_counter() - start) / k

    first = float(step().item())
    return {"torch": lambda k: {"eager": run(k, False)},
            "torch_item": lambda k: {"eager + loss.item()": run(k, True)}}, first


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
def calibrate(run, block_s: float, warmup_s: float) -> tuple[int, float]:
    """Warm ``run`` up for about ``warmup_s`` (at least 3 steps); k so a block takes block_s."""
    run(1)
    run(1)
    start, calls = time.perf_counter(), 0
    while True:
        run(1)
        calls += 1
        spent = time.perf_counter() - start
        if spent >= warmup_s:
            break
    per = spent / calls
    return max(1, round(block_s / per)), per


def interleaved(runs: dict, blocks: int, ks: dict) -> dict:
    """Median (and spread) of each variant's seconds per step over alternating blocks."""
    samples: dict[str, list[float]] = {}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for b in range(blocks):
            for name in (list(runs) if b % 2 == 0 else list(runs)[::-1]):
                for variant, s in runs[name](ks[name]).items():
                    samples.setdefault(variant, []).append(s)
    finally:
        if enabled:
            gc.enable()
    return {v: {"median_s": float(np.median(s)), "min_s": float(np.min(s)),
                "q1_s": float(np.percentile(s, 25)), "q3_s": float(np.percentile(s, 75)),
                "blocks": len(s)} for v, s in samples.items()}


def sanity(models: dict, batch: int) -> list[dict]:
    """First-step loss of the CUDA step vs the CPU step from the same weights, per model."""
    import symnet as sn

    results = []
    for sizes in models.values():
        gpu_model, cpu_model = symnet_mlp(sizes), symnet_mlp(sizes)
        cpu_model.load_state_dict(gpu_model.state_dict())
        gpu_model.to("cuda")
        X, y = batch_of(sizes, batch)
        losses = [float(sn.compile(m, sn.CrossEntropyLoss(),
                                   symnet_optimizer("SGD", m.parameters()))(X, y))
                  for m in (gpu_model, cpu_model)]
        results.append({"model": "-".join(map(str, sizes)), "batch": batch, "cuda": losses[0],
                        "cpu": losses[1], "difference": abs(losses[0] - losses[1])})
    return results


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def _time(s: float | None) -> str:
    if s is None:
        return "—"
    us = s * 1e6
    return f"{us / 1000:,.2f} ms" if us >= 10_000 else f"{us:,.1f} µs"


def _ratio(a: float | None, b: float) -> str:
    return "—" if a is None else f"{a / b:.2f}×"


def print_table(rows: list[dict], torch_label: str) -> None:
    print(f"| model | optimizer | batch | symnet timing | symnet | {torch_label} | speedup | "
          f"{torch_label} + loss.item() | speedup | symnet GFLOP/s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        th, item = r["torch_s"], r["torch_item_s"]
        for variant in ("step + sync", "step call only"):
            s = r["symnet_s"][variant]
            print(f"| {r['model']} | {r['optimizer']} | {r['batch']} | {variant} | {_time(s)} | "
                  f"{_time(th)} | {_ratio(th, s)} | {_time(item)} | {_ratio(item, s)} | "
                  f"{r['flops'] / s / 1e9:,.1f} |")


def main() -> int:
    args = ARGS or _parse()
    t_start = time.perf_counter()
    simulated = bool(args.simulate)
    import numba

    import symnet as sn
    from symnet.backends import cuda as sn_cuda

    if numba.config.ENABLE_CUDASIM and not simulated:
        print("gpu_step.py: NUMBA_ENABLE_CUDASIM=1 is set: the full-size rows would take hours "
              "in the simulator; unset it on a GPU machine, or pass --simulate", file=sys.stderr)
        return 2
    if not sn_cuda.is_available():
        try:
            sn_cuda.require()
        except RuntimeError as error:
            reason = " ".join(str(error).split(". To run")[0].split())
            print(f"gpu_step.py: no GPU to benchmark: {reason} (--simulate runs the script in "
                  "Numba's CUDA simulator instead)", file=sys.stderr)
        return 2
    from numba import cuda

    card = numba_device(cuda, simulated)
    torch, device, torch_why = torch_device(simulated)
    models = SIMULATED_MODELS if simulated else MODELS
    batches = SIMULATED_BATCHES if simulated else BATCHES
    if simulated:
        blocks, fixed_k = 2, 2
        if args.quick:
            batches = batches[:1]
    else:
        blocks, fixed_k = (3, None) if args.quick else (31, None)
    block_s, warmup_s = (0.005, 0.05) if args.quick else (0.05, 0.5)

    checks = []
    if args.sanity:
        checks = sanity(models, batches[0])
        for c in checks:
            ok = c["difference"] <= SANITY_TOLERANCE
            print(f"  sanity {c['model']} N={c['batch']}: first-step loss CUDA {c['cuda']:.7f}, "
                  f"CPU {c['cpu']:.7f}, |Δ| {c['difference']:.2e} "
                  f"{'ok' if ok else f'> {SANITY_TOLERANCE:g}: FAILED'}",
                  file=sys.stderr, flush=True)
        if any(c["difference"] > SANITY_TOLERANCE for c in checks):
            print(f"gpu_step.py: sanity check failed: the CUDA step's first loss differs from "
                  f"the CPU step's by more than {SANITY_TOLERANCE:g}", file=sys.stderr)
            return 1

    rows = []
    for sizes in models.values():
        for optimizer in OPTIMIZERS:
            for batch in batches:
                X, y = batch_of(sizes, batch)
                t0 = time.perf_counter()
                model = symnet_mlp(sizes)
                first = {}
                runs = {}
                if device is not None:
                    th_runs, first["torch"] = torch_block(torch, device, sizes, optimizer,
                                                          model, X, y)
                model.to("cuda")
                step = sn.compile(model, sn.CrossEntropyLoss(),
                                  symnet_optimizer(optimizer, model.parameters()),
                                  check_finite=False)
                first["symnet"] = float(step(X, y))
                runs["symnet"] = symnet_block(cuda, step, X, y)
                if device is not None:
                    runs.update(th_runs)
                if fixed_k:  # the simulator: one warm-up step, then fixed blocks
                    for run in runs.values():
                        run(1)
                    ks = dict.fromkeys(runs, fixed_k)
                else:
                    ks = {name: calibrate(run, block_s, warmup_s)[0]
                          for name, run in runs.items()}
                setup_s = time.perf_counter() - t0
                timing = interleaved(runs, blocks, ks)
                row = {"model": "-".join(map(str, sizes)), "optimizer": optimizer,
                       "batch": batch, "symnet_s": {v: timing[v]["median_s"] for v in
                                                    ("step + sync", "step call only")},
                       "torch_s": timing.get("eager", {}).get("median_s"),
                       "torch_item_s": timing.get("eager + loss.item()", {}).get("median_s"),
                       "flops": 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])),
                       "k": ks, "timing": timing, "setup_s": setup_s, "first_loss": first}
                rows.append(row)
                print(f"  measured {row['model']} {optimizer:4s} N={batch:<5d}: symnet "
                      f"{_time(row['symnet_s']['step + sync'])}, torch {_time(row['torch_s'])}",
                      file=sys.stderr, flush=True)

    # ---- print -------------------------------------------------------------------------
    title = "symnet CUDA train step vs PyTorch CUDA eager"
    print(f"## {title} (float32, median of {blocks} interleaved blocks"
          f"{' — QUICK smoke run' if args.quick else ''})\n")
    if simulated:
        print("- SIMULATED: Numba's CUDA simulator, tiny shapes standing in for "
              f"{' and '.join('-'.join(map(str, m)) for m in MODELS.values())} at batch "
              f"{' and '.join(map(str, BATCHES))}; the numbers are meaningless, this run only "
              "proves the script works end to end")
    print(f"- card (numba): {card['name']}"
          + (f", compute capability {card['compute_capability']}" if not simulated else ""))
    if torch is not None and device is not None and device.type == "cuda":
        print(f"- card (torch): {torch.cuda.get_device_name()}")
    if not simulated:
        print(f"- driver: CUDA driver API {card['driver_cuda_version']}; nvidia-smi (name, "
              f"driver, memory, max SM clock): {card['nvidia_smi']}")
        print(f"- toolkit: Numba {numba.__version__} ({card['implementation']} CUDA target), "
              f"CUDA runtime {card['runtime_version']}, NVVM {card['nvvm_version']}")
    if torch is None:
        print(f"- PyTorch: {torch_why}")
    elif device is not None and device.type == "cuda":
        print(f"- PyTorch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}, float32 matmul precision "
              f"{torch.get_float32_matmul_precision()!r}, torch.optim defaults")
    elif device is not None:
        print(f"- PyTorch CUDA unavailable: {torch_why}; --simulate times torch on the CPU "
              "instead, only to exercise the code")
    else:
        print(f"- PyTorch CUDA unavailable: {torch_why}; symnet rows only")
    print(f"- versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, symnet {sn.__version__}")
    print("- symnet: step(X, y) with host numpy X, y: the batch goes in, the loss comes out "
          "(\"step + sync\": blocks closed by numba.cuda.synchronize(); \"step call only\": "
          "perf_counter around each call)")
    print("- PyTorch: batch copied host → device every step (torch.from_numpy(X).to(device), "
          "pageable); zero_grad; cross_entropy; backward; opt.step(); synchronize at block "
          "ends; \"+ loss.item()\" also copies the loss to the host every step")
    print()
    label = "PyTorch CUDA" if device is not None and device.type == "cuda" else \
        "PyTorch CPU (simulate only)" if device is not None else "PyTorch CUDA"
    print_table(rows, label)
    if checks:
        worst = max(c["difference"] for c in checks)
        print(f"\nsanity: CUDA vs CPU step first-step losses from the same weights agree "
              f"within {worst:.2e} (tolerance {SANITY_TOLERANCE:g})")
    with_torch = [r for r in rows if "torch" in r["first_loss"]]
    if with_torch:
        worst = max(abs(r["first_loss"]["symnet"] - r["first_loss"]["torch"])
                    for r in with_torch)
        print(f"first-step losses, symnet CUDA vs {label} (same weights and batch): "
              f"within {worst:.2e}")
    total = time.perf_counter() - t_start
    print(f"whole run: {total:.0f} s")

    if args.json:
        result = {"simulated": simulated, "quick": args.quick, "blocks": blocks, "card": card,
                  "torch": {"version": getattr(torch, "__version__", None),
                            "device": str(device) if device is not None else None,
                            "unavailable": torch_why,
                            "card": (torch.cuda.get_device_name() if device is not None
                                     and device.type == "cuda" else None)},
                  "versions": {"python": platform.python_version(), "numpy": np.__version__,
                               "numba": numba.__version__, "symnet": sn.__version__},
                  "sanity": checks, "rows": rows, "run_s": total}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
