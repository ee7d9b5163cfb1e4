"""Run under ``mpiexec -n R``: data-parallel training of a small MLP, one file per rank.

Usage:
    mpiexec -n 2 python tests/mpi/dp_step.py OUT_DIR             # every case in CASES
    mpiexec -n 2 python tests/mpi/dp_step.py OUT_DIR --bad-rank 1 # that rank gets bad input

Each rank seeds its own initial weights differently (seed + rank), so only
`broadcast_parameters` can make them agree with rank 0's.  For each case every rank
writes ``OUT_DIR/<case>.rank<r>.npz``: the final parameters and the loss of every step.
tests/test_distributed.py imports this file for the same model, batches and optimizers.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import symnet as sn

SEED = 3
#: global batch sizes, one per step: odd sizes give unequal shards, 1 leaves a rank empty.
BATCHES = (32, 33, 7, 1, 32, 17, 32, 32, 5, 32, 33, 32, 2, 32, 31, 32, 32, 9, 32, 32)
#: name -> (loss, optimizer)
CASES = {
    "sgd_momentum": (lambda: sn.CrossEntropyLoss(),
                     lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9)),
    "adam": (lambda: sn.CrossEntropyLoss(), lambda p: sn.optim.Adam(p, lr=0.01)),
    "sgd_mse_sum": (lambda: sn.MSELoss(reduction="sum"), lambda p: sn.optim.SGD(p, lr=0.01)),
    # a module used twice: its gradient is the sum over both uses, reduced once
    "shared_adam": (lambda: sn.CrossEntropyLoss(), lambda p: sn.optim.Adam(p, lr=0.01)),
}


def model(seed: int, case: str = "") -> sn.Module:
    sn.manual_seed(seed)
    if case.startswith("shared"):
        shared = sn.Linear(16, 16)
        return sn.Sequential(sn.Linear(6, 16), sn.Tanh(), shared, sn.Tanh(), shared,
                             sn.Linear(16, 3)).to(np.float64)
    return sn.Sequential(sn.Linear(6, 16), sn.Tanh(), sn.Linear(16, 3)).to(np.float64)


def global_batches(case: str):
    """The same (X, y) sequence on every rank and in the one-process reference."""
    rng = np.random.default_rng(SEED)
    for n in BATCHES:
        X = rng.standard_normal((n, 6))
        labels = rng.integers(0, 3, n)
        yield X, (labels if "mse" not in case else np.eye(3)[labels])


def main(out: str, bad_rank: int | None, cases: tuple[str, ...] = tuple(CASES)) -> None:
    from symnet.backends.mpi import DistributedStep, broadcast_parameters, rank

    me = rank()
    for case in cases:
        loss, optimizer = CASES[case]
        net = model(SEED + me, case)
        broadcast_parameters(net)
        step = DistributedStep(net, loss(), optimizer(net.parameters()))
        losses = []
        for k, (X, y) in enumerate(global_batches(case)):
            if me == bad_rank and k == 2:
                X = X[:, :5]  # a wrong feature count on this rank only
            losses.append(step(X, y))
        np.savez(os.path.join(out, f"{case}.rank{me}.npz"), losses=np.array(losses),
                 **net.state_dict())


if __name__ == "__main__":
    bad = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--bad-rank" else None
    main(sys.argv[1], bad)
