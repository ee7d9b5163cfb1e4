"""Training checkpoints: the model, the optimizer and where the run stands.

`save_checkpoint` writes what `symnet.train.train` needs to continue a killed run and end
bit-identical to an uninterrupted one: model and optimizer state (with its step count),
the architecture and feature scaling (so ``evaluate`` rebuilds the model from the file
alone), the settings a resume must share (`RESUME_FIELDS`) and the run's `Progress`.
`restore` loads it back, refusing a checkpoint made with other settings.

Example:
    >>> Progress().epoch, Progress().batch
    (1, 0)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import symnet as sn

if TYPE_CHECKING:
    from symnet.train import TrainConfig, TrainResult

#: What a resumed run must share with its checkpoint; ``epochs`` may grow, the device change.
RESUME_FIELDS = ("layers", "activation", "optimizer", "lr", "batch_size", "seed", "dataset",
                 "csv", "target", "dtype")


@dataclass
class Progress:
    """Where a run stands; a checkpoint holding it replays the rest of the run exactly.

    ``rng`` is the batch-order generator's ``bit_generator.state`` at the start of
    ``epoch``, so the epoch's permutation can be drawn again and its first ``batch``
    batches skipped.  ``loss_sum`` is Σ loss·batch size over those batches.
    """

    epoch: int = 1
    batch: int = 0
    rng: dict = field(default_factory=dict)
    loss_sum: float = 0.0
    history: list[tuple[int, float, float]] = field(default_factory=list)


def _metadata(result: TrainResult, config: TrainConfig) -> dict:
    return {"architecture": result.architecture.to_dict(), "scaling": result.scaling,
            "dataset": config.dataset if config.csv is None else None, "csv": config.csv,
            "target": config.target, "seed": config.seed, "accuracy": result.accuracy,
            "config": {k: getattr(config, k) for k in RESUME_FIELDS}}


def save_checkpoint(result: TrainResult, config: TrainConfig, path: str,
                    progress: Progress | None = None) -> None:
    """Model, optimizer state (with its step count), metadata and, if given, `Progress`."""
    meta = _metadata(result, config)
    if progress is not None:
        meta["progress"] = dataclasses.asdict(progress)
    sn.save({"model": result.model.state_dict(), "optimizer": result.optimizer.state_dict(),
             "meta": meta}, path)


def _flags(config: dict) -> dict[str, str]:
    return {k: ",".join(map(str, v)) if k == "layers" else str(v) for k, v in config.items()}


def restore(path: str, config: TrainConfig, model: sn.Module,
            optimizer: sn.optim.Optimizer) -> Progress:
    """Load a checkpoint written by `train` into ``model``/``optimizer``; returns its Progress.

    A checkpoint from a run with other settings (`RESUME_FIELDS`) is refused, naming them.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    bundle = sn.load(path)
    meta = bundle.get("meta") if isinstance(bundle, dict) else None
    if not isinstance(meta, dict) or "progress" not in meta or "config" not in meta:
        raise ValueError(f"--resume: {path} is not a resumable symnet training checkpoint "
                         f"(no training progress in its metadata)")
    saved, wanted = _flags(meta["config"]), _flags({k: getattr(config, k) for k in RESUME_FIELDS})
    differ = [k for k in RESUME_FIELDS if saved.get(k) != wanted[k]]
    if differ:
        change = "; ".join(f"--{k.replace('_', '-')} {saved.get(k)} there, {wanted[k]} here"
                           for k in differ)
        raise ValueError(f"--resume: {path} was trained with other settings ({change}); "
                         f"use the same ones or a new --save path")
    model.load_state_dict(bundle["model"])
    optimizer.load_state_dict(bundle["optimizer"])
    p = meta["progress"]
    return Progress(int(p["epoch"]), int(p["batch"]), p["rng"], float(p["loss_sum"]),
                    [tuple(row) for row in p["history"]])
