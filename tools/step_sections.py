"""Where the fused train step's time goes: its generated source, section by section.

Compiles the benchmarks' MLP step (ReLU, cross-entropy, float32, ``check_finite=False``),
takes its generated source, puts a timer before every commented section (``# Z1 = W1*X``)
and after the last, and calls that copy on the step's own arrays.  Prints the median µs of
each section over the calls (a timer costs about 1 µs; sections of a few µs are noise).

Usage:
    taskset -c 0 .venv/bin/python tools/step_sections.py --batch 4096 --serial
    .venv/bin/python tools/step_sections.py --layers 784,512,512,10 --optimizer Adam
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from mlp import symnet_mlp, symnet_optimizer  # noqa: E402

import symnet as sn  # noqa: E402

TIMER = "    with objmode(t='float64'):\n        t = time.perf_counter()\n    _T[{k}] = t"


def instrumented(source: str) -> tuple[str, list[str]]:
    """``source`` with ``train_step`` timing each top-level commented section into ``_T``
    (returned beside the loss), and the sections' comments."""
    lines, labels, inside = [], [], False
    for line in source.splitlines():
        if line.startswith("def train_step"):
            inside = True
            lines += [line, "    _T = np.zeros(256)"]
            continue
        if inside and line.startswith("    # ") and not line.startswith("    # ("):
            lines.append(TIMER.format(k=len(labels)))
            labels.append(line.strip()[2:])
        elif inside and line.startswith("    return "):
            lines += [TIMER.format(k=len(labels)), line.replace("return ", "return _T, ", 1)]
            inside = False
            continue
        lines.append(line)
    text = "\n".join(lines).replace("from numba import njit, prange",
                                    "from numba import njit, objmode, prange\nimport time")
    return text.replace("@njit(cache=True, parallel=", "@njit(cache=False, parallel="), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="784,128,10")
    parser.add_argument("--optimizer", default="SGD", choices=("SGD", "Adam"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--serial", action="store_true",
                        help="time the serial kernel (else the threaded one)")
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.layers.split(","))
    model = symnet_mlp(sizes)
    step = sn.compile(model, sn.CrossEntropyLoss(),
                      symnet_optimizer(args.optimizer, model.parameters()),
                      check_finite=False, parallel=False if args.serial else "auto")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], args.batch)
    step(X, y)  # compiles, and leaves the arrays of this batch in the step's cache
    text, labels = instrumented(step.source(threaded=not args.serial))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sections.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("sections", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sections"] = module  # the timers' object-mode blocks look it up
        spec.loader.exec_module(module)
        named, arguments = step._cache[3], step._cache[2]  # the arrays the step passes
        leading = [named[n] for n in step.program.arguments[:2]]
        scalars = step._scalars(step.program.scalars)
        found = []
        for call in range(args.calls + 5):
            times = module.train_step(*leading, *arguments, *scalars)[0]
            if call >= 5:
                found.append(np.diff(times[:len(labels) + 1]) * 1e6)
    medians = [statistics.median(column) for column in zip(*found)]
    kind = "serial" if args.serial else f"threaded ({sn.get_num_threads()} threads)"
    print(f"{args.layers} {args.optimizer} batch {args.batch}, {kind} kernel, "
          f"median of {args.calls} calls:")
    for label, us in zip(labels, medians):
        print(f"{us:10.1f} µs  {label}")
    print(f"{sum(medians):10.1f} µs  in all")


if __name__ == "__main__":
    main()
