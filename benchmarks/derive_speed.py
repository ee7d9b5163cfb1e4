"""How long deriving and printing an MLP's backprop takes, by depth.

``derive`` caches its SymPy work per shape pattern and per activation (``functools.cache``),
so the first derivation in a process (cold) and later ones (warm) are measured apart: each
cold run is a fresh interpreter timing its first ``derive`` + text + LaTeX + Mermaid (after
imports, which are reported on their own); warm runs repeat that in this process after one
untimed call.  Each cell is the median of ``--runs`` runs.

Run:
    .venv/bin/python benchmarks/derive_speed.py
    .venv/bin/python benchmarks/derive_speed.py --depths 2,5,10,20 --activation sigmoid
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def model_of(depth: int, width: int, activation: str):
    """``depth`` Linear(width, width) layers with ``activation`` between them."""
    import symnet as sn
    from symnet.app.architecture import ACTIVATIONS

    layers = []
    for k in range(depth):
        layers.append(sn.Linear(width, width))
        if k < depth - 1:
            layers.append(ACTIVATIONS[activation]())
    return sn.Sequential(*layers)


def derive_and_print(depth: int, width: int, activation: str) -> float:
    """Seconds to derive (with Adam's updates) and render all three formats."""
    import symnet as sn

    model = model_of(depth, width, activation)
    start = time.perf_counter()
    d = sn.derive(model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters()))
    str(d), d.latex(), d.mermaid()
    return time.perf_counter() - start


def cold(depth: int, width: int, activation: str) -> dict[str, float]:
    """One fresh interpreter: import time and first derive + print."""
    out = subprocess.run([sys.executable, __file__, "--child", str(depth), str(width),
                          activation], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def warm(depth: int, width: int, activation: str, runs: int) -> float:
    derive_and_print(depth, width, activation)  # fill the caches
    return statistics.median(derive_and_print(depth, width, activation) for _ in range(runs))


def _child(depth: int, width: int, activation: str) -> None:
    start = time.perf_counter()
    import symnet  # noqa: F401

    imported = time.perf_counter() - start
    print(json.dumps({"import": imported, "first": derive_and_print(depth, width, activation)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,5,10", help="numbers of Linear layers")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        depth, width, activation = args.child
        _child(int(depth), int(width), activation)
        return

    print(f"MLP of width {args.width}, {args.activation}, cross-entropy, Adam; "
          f"median of {args.runs} runs; times include text, LaTeX and Mermaid output")
    print()
    print("| Linear layers | import symnet | cold derive + print | warm derive + print |")
    print("|---:|---:|---:|---:|")
    for depth in (int(d) for d in args.depths.split(",")):
        colds = [cold(depth, args.width, args.activation) for _ in range(args.runs)]
        imported = statistics.median(c["import"] for c in colds)
        first = statistics.median(c["first"] for c in colds)
        again = warm(depth, args.width, args.activation, args.runs)
        print(f"| {depth} | {imported * 1e3:,.0f} ms | {first * 1e3:,.0f} ms "
              f"| {again * 1e3:,.1f} ms |")


if __name__ == "__main__":
    main()
