"""dp_layers.py's model in PyTorch, and the same training under torch's own
``DistributedDataParallel`` (gloo, CPU), one file per rank.

Usage:
    mpiexec -n 2 python tests/mpi/ddp_layers.py SYMNET_RUN_DIR OUT_DIR

Rank r applies the dropout masks symnet's rank r drew (``SYMNET_RUN_DIR/<case>.rank<r>.npz``)
and writes ``OUT_DIR/<case>.ddp.rank<r>.npz`` as dp_layers.py does.  DDP is left at its
defaults: it syncs rank 0's parameters and buffers when it is built and broadcasts rank 0's
buffers at the start of every forward; BatchNorm is torch's own, on each rank's shard.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import dp_layers  # noqa: E402 - the symnet side of this comparison, next to this file

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: name -> torch's optimizer with symnet's hyperparameters (dp_layers.CASES)
OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


class Masked(torch.nn.Module):
    """torch's dropout with a given 0/1 mask (a symnet rank's ``last_mask``)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.mask = p, None

    def forward(self, x):
        return x * self.mask / (1 - self.p)


class Block(torch.nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, hidden)
        self.drop = Masked(dp_layers.P_BLOCK)
        self.fc2 = torch.nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(self.drop(F.gelu(self.fc1(self.norm(x)))))


def model(seed: int) -> torch.nn.Module:
    """The torch model with the values of ``dp_layers.model(seed)``."""
    net = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False),
                              torch.nn.BatchNorm1d(8, momentum=0.2), torch.nn.Tanh(),
                              Block(8, 12), Masked(dp_layers.P_OUT), torch.nn.RMSNorm(8),
                              torch.nn.Linear(8, 3)).double()
    state = dp_layers.model(seed).state_dict()
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return net


def use_masks(net: torch.nn.Module, run, step: int) -> None:
    """Put the masks one symnet rank drew at ``step`` into ``net``'s dropout layers."""
    layers = dict(net.named_modules())
    for name in dp_layers.DROPOUTS:
        layers[name].mask = torch.tensor(run[f"mask.{step}.{name}"])


def record_statistics(net: torch.nn.Module, step: int, into: dict) -> None:
    for key, value in net.state_dict().items():
        if key.startswith("1.running") or key.endswith("num_batches_tracked"):
            into[f"after.{step}.{key}"] = value.numpy().copy()


def main(run_dir: str, out: str) -> None:
    import torch.distributed as dist

    # mpiexec (MPICH's Hydra) only starts the ranks; gloo connects them, MPI stays unused
    me, ranks = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
    dist.init_process_group("gloo", init_method=Path(out, "ddp-store").resolve().as_uri(),
                            rank=me, world_size=ranks)
    for case in dp_layers.CASES:
        net = model(dp_layers.SEED + me)  # DDP's construction makes rank 0's everyone's
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        optimizer = OPTIMIZERS[case](ddp.parameters())
        run = np.load(os.path.join(run_dir, f"{case}.rank{me}.npz"))
        record: dict[str, np.ndarray] = {}
        losses = []
        for k, (X, y) in enumerate(dp_layers.global_batches()):
            rows = np.array_split(np.arange(len(y)), ranks)[me]
            use_masks(net, run, k)
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp(torch.tensor(X[rows])), torch.tensor(y[rows]))
            # DDP averages the ranks' gradients; weighting each by ranks·n_r/n makes that the
            # shard-size weighted mean symnet takes (the same when the shards are equal).
            (loss * (ranks * len(rows) / len(y))).backward()
            optimizer.step()
            total = torch.tensor([loss.item() * len(rows) / len(y)], dtype=torch.float64)
            dist.all_reduce(total)
            losses.append(total.item())
            record_statistics(net, k, record)
        state = {k: v.numpy() for k, v in net.state_dict().items()}
        np.savez(os.path.join(out, f"{case}.ddp.rank{me}.npz"), losses=np.array(losses),
                 **record, **state)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
