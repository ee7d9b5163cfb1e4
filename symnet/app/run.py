"""What a training run is: its settings (`TrainConfig`), where it stands (`Progress`) and
what it gives back (`TrainResult`) — shared by the loop (`symnet.app.train`) and the run
checkpoints (`symnet.app.checkpoint`), neither of which imports the other for them.

Example:
    >>> TrainConfig(layers=(64, 10)).optimizer, Progress().epoch
    ('adam', 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from symnet.app.architecture import Architecture
from symnet.app.model_file import ModelFile
from symnet.nn.module import Module
from symnet.optim import Optimizer

#: what builds a run's network: widths and an activation (``--layers``), or a user's file
#: (``--model``); both give ``model()``, ``loss``, ``dtype``, ``inputs`` and ``outputs``
Blueprint = Architecture | ModelFile


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


@dataclass
class TrainConfig:
    """Everything a run depends on (``device`` and ``max_steps`` only say where and how far).

    The network is ``layers`` and ``activation``, or ``model``, a ``FILE.py:NAME`` string
    (see `symnet.app.model_file`); ``layers`` is then empty.
    """

    layers: tuple[int, ...] = ()
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float | None = None
    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    dataset: str = "digits"
    csv: str | None = None
    target: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    max_steps: int | None = None
    distributed: bool = False  # data-parallel over MPI ranks (symnet.backends.mpi)
    task: str | None = None  # a CSV file's: "classification", "regression"; None: guess
    model: str | None = None  # FILE.py:NAME instead of layers and activation


@dataclass
class TrainResult:
    """The trained model and optimizer, per-epoch ``history`` rows ``(epoch, mean loss,
    metric)`` (from the start of the run, also after a resume) and this process's per-step
    ``losses``."""

    model: Module
    optimizer: Optimizer
    blueprint: Blueprint
    accuracy: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    scaling: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # per step, this process's steps only
    progress: Progress = field(default_factory=Progress)
    features: tuple[str, ...] | None = None  # a CSV file's feature columns, in input order
    labels: tuple[int | float, ...] | None = None  # a CSV file's value of each class index
