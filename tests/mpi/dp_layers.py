"""Run under ``mpiexec -n R``: data-parallel training of a model with LayerNorm, a residual
block, BatchNorm1d, RMSNorm and two Dropouts, one file per rank.

Usage:
    mpiexec -n 2 python tests/mpi/dp_layers.py OUT_DIR

As in dp_step.py each rank builds its model from its own seed (``SEED + rank``), so only
`broadcast_parameters` makes them agree, and the masks come from the step's generator.  For
each case every rank writes ``OUT_DIR/<case>.rank<r>.npz``: the loss of every step, every
Dropout's ``last_mask`` after every step (``mask.<step>.<layer>``), the running statistics
after every step (``after.<step>.<key>``) and the final state dict.
tests/mpi/test_dp_layers.py imports this file for the same model, batches and optimizers.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import symnet as sn

SEED = 5
F64 = np.float64
P_BLOCK, P_OUT = 0.3, 0.25
#: global batch sizes: odd ones give unequal shards; 4 gives each rank the smallest allowed (2)
BATCHES = (16, 17, 9, 4, 16, 5, 12, 7, 16, 11)
#: name -> optimizer
CASES = {
    "sgd_momentum": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9),
    "adamw": lambda p: sn.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}
#: the Dropout layers by state-dict prefix, in the order the forward draws their masks
DROPOUTS = ("3.drop", "4")


class Block(sn.Module):
    """A pre-norm residual block with dropout: x + fc2(drop(gelu(fc1(norm(x)))))."""

    def __init__(self, d: int, hidden: int, p: float):
        super().__init__()
        self.norm = sn.LayerNorm(d, dtype=F64)
        self.fc1 = sn.Linear(d, hidden, dtype=F64)
        self.drop = sn.Dropout(p)
        self.fc2 = sn.Linear(hidden, d, dtype=F64)

    def forward(self, x):
        return x + self.fc2(self.drop(sn.gelu(self.fc1(self.norm(x)))))


def model(seed: int, dropout: bool = True) -> sn.Module:
    """The model, from ``seed``; ``dropout=False``: both Dropouts with p = 0."""
    # No bias feeds a mean-subtracting norm: its gradient would be 0 up to rounding, which
    # AdamW would blow up to ±lr, so no two correct runs would agree.
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(6, 8, bias=False, dtype=F64),
                         sn.BatchNorm1d(8, momentum=0.2, dtype=F64), sn.Tanh(),
                         Block(8, 12, P_BLOCK * dropout), sn.Dropout(P_OUT * dropout),
                         sn.RMSNorm(8, dtype=F64), sn.Linear(8, 3, dtype=F64))


def global_batches():
    """The same (X, labels) sequence on every rank and in the reference."""
    rng = np.random.default_rng(SEED)
    for n in BATCHES:
        yield 1.5 * rng.standard_normal((n, 6)) + 0.3, rng.integers(0, 3, n)


def main(out: str, cases: tuple[str, ...] = tuple(CASES)) -> None:
    from symnet.backends.mpi import DistributedStep, broadcast_parameters, rank

    me = rank()
    for case in cases:
        net = model(SEED + me)
        broadcast_parameters(net)
        step = DistributedStep(net, sn.CrossEntropyLoss(), CASES[case](net.parameters()))
        modules = dict(net.named_modules())
        record: dict[str, np.ndarray] = {}
        losses = []
        for k, (X, y) in enumerate(global_batches()):
            losses.append(step(X, y))
            for name in DROPOUTS:
                record[f"mask.{k}.{name}"] = modules[name].last_mask
            for key, value in net.state_dict().items():
                if key.startswith("1.running") or key.endswith("num_batches_tracked"):
                    record[f"after.{k}.{key}"] = value
        np.savez(os.path.join(out, f"{case}.rank{me}.npz"), losses=np.array(losses),
                 **record, **net.state_dict())


if __name__ == "__main__":
    main(sys.argv[1])
