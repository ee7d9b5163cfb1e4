"""What denormal floats cost a step that has fitted its batch, and what flushing them saves:
784-128-10 (ReLU, cross-entropy, float32) trained with Adam on one fixed sample, µs per
step over blocks of 1,000 steps, with IEEE arithmetic (``sn.compile(..., denormals="ieee")``)
and flushed to zero (symnet's default, ``denormals="auto"``; PyTorch, when installed,
without and with ``torch.set_flush_denormal``), each in a fresh process on one core.

The loss reaches 0 within a few thousand steps; from there the gradients, and Adam's
moments after them, decay through the denormal range, which many x86 CPUs compute on a slow
path.  XLA (JAX's compiler) flushes denormals on the CPU by default.

Usage:
    .venv/bin/python benchmarks/denormals.py [--blocks 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from mlp import symnet_mlp, symnet_optimizer, torch_mlp, torch_step
import symnet as sn
library, flush, blocks = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
rng = np.random.default_rng(0)
X, y = rng.random((1, 784), np.float32), rng.integers(0, 10, 1)
model = symnet_mlp((784, 128, 10))
if library == "symnet":
    step = sn.compile(model, sn.CrossEntropyLoss(), symnet_optimizer("Adam", model.parameters()),
                      check_finite=False, denormals="auto" if flush else "ieee")
    run = lambda: step(X, y)
else:
    import torch
    torch.set_flush_denormal(flush)
    net, opt = torch_mlp(torch, (784, 128, 10), model, "Adam")
    run = torch_step(net, opt, torch.from_numpy(X), torch.from_numpy(y))
run()
found = []
for _ in range(blocks):
    start = time.perf_counter()
    for _ in range(1000):
        loss = run()
    found.append([(time.perf_counter() - start) * 1e3, float(loss)])
print(json.dumps(found))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    libraries = ["symnet"]
    try:
        import torch  # noqa: F401
        libraries.append("torch")
    except ImportError:
        pass
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env |= dict.fromkeys(("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"), "1")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    rows = {}
    for library in libraries:
        for flush in (False, True):
            done = subprocess.run([*pin, sys.executable, "-c", CHILD, str(HERE), library,
                                   "1" if flush else "0", str(args.blocks)],
                                  env=env, capture_output=True, text=True, check=True)
            rows[(library, flush)] = json.loads(done.stdout)
    print("| library | denormals | " + " | ".join(f"steps {k}k–{k + 1}k" for k in
                                                 range(args.blocks)) + " |")
    print("|---|---|" + "---:|" * args.blocks)
    for (library, flush), blocks in rows.items():
        name = "symnet" if library == "symnet" else "PyTorch"
        cells = " | ".join(f"{ms:,.0f} µs (loss {loss:.0e})" for ms, loss in blocks)
        print(f"| {name} | {'flushed' if flush else 'IEEE'} | {cells} |")


if __name__ == "__main__":
    main()
