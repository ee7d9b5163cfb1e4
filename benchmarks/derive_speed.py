"""How long deriving and printing an MLP's backprop takes, by depth (median of runs).

Run: .venv/bin/python benchmarks/derive_speed.py
The first (cold) time is measured in a fresh process: derive() caches its SymPy rules.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import symnet as sn

COLD = """
import time, symnet as sn
t = time.perf_counter()
layers = []
for k in range({depth}):
    layers += [sn.Linear(64, 64), sn.ReLU()]
model = sn.Sequential(*layers[:-1])
str(sn.derive(model, sn.CrossEntropyLoss()))
print(time.perf_counter() - t)
"""


def model_of(depth: int) -> sn.Module:
    layers: list[sn.Module] = []
    for _ in range(depth):
        layers += [sn.Linear(64, 64), sn.Sigmoid()]
    return sn.Sequential(*layers[:-1])


def warm(depth: int, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        d = sn.derive(model_of(depth), sn.CrossEntropyLoss(), None)
        str(d), d.latex(), d.mermaid()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold(depth: int) -> float:
    out = subprocess.run([sys.executable, "-c", COLD.format(depth=depth)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip())


def main() -> None:
    print("| layers (Linear) | cold derive + print (fresh process) | warm median of 5 |")
    print("|---:|---:|---:|")
    for depth in (2, 5, 10):
        print(f"| {depth} | {cold(depth) * 1e3:,.0f} ms | {warm(depth) * 1e3:,.1f} ms |")


if __name__ == "__main__":
    main()
