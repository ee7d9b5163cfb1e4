"""A/B on a GPU: the CUDA step's batch upload into reused device arrays vs a new array per step.

One process, one model per row, the two variants in alternating blocks of 50 steps (21
blocks, medians); ``step._upload`` is swapped for ``cuda.to_device`` (what the step did
before) in the "new array" blocks.  Needs a GPU:

    NUMBA_ENABLE_CUDASIM=0 python3 benchmarks/gpu_upload_ab.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlp import symnet_mlp, symnet_optimizer  # noqa: E402
from numba import cuda  # noqa: E402

import symnet as sn  # noqa: E402


def run(batch, optimizer):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    m = symnet_mlp((784, 128, 10)).to("cuda")
    step = sn.compile(m, sn.CrossEntropyLoss(), symnet_optimizer(optimizer, m.parameters()),
                      check_finite=False)
    reuse = step._upload

    def fresh(name, host):
        return step.cuda.to_device(host)

    for _ in range(20):
        step(X, y)
    out = {"reuse": [], "fresh": []}
    for b in range(21):
        for name in (("reuse", "fresh") if b % 2 == 0 else ("fresh", "reuse")):
            step._upload = reuse if name == "reuse" else fresh
            cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                step(X, y)
            cuda.synchronize()
            out[name].append((time.perf_counter() - t) / 50)
    r, f = np.median(out["reuse"]), np.median(out["fresh"])
    print(f"{optimizer:4s} N={batch:5d}: reused buffers {r * 1e6:8.1f} us, new array per step "
          f"{f * 1e6:8.1f} us, ratio {f / r:.2f}", flush=True)


if __name__ == "__main__":
    for opt in ("SGD", "Adam"):
        for batch in (256, 4096):
            run(batch, opt)
