"""Training and evaluation on bundled or CSV data: what ``symnet train`` / ``evaluate`` run.

A fixed seed fixes everything: initial weights, the 80/20 split, the batch order.  The
checkpoint carries the architecture and the feature scaling in its metadata, so
``evaluate`` rebuilds the model from the file alone.

Example:
    >>> from symnet.train import TrainConfig, train
    >>> result = train(TrainConfig(layers=(64, 32, 10), epochs=2), log=lambda line: None)
    >>> 0.5 < result.accuracy <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import symnet as sn
from symnet.architecture import Architecture
from symnet.data import Dataset, batches, load_csv, load_dataset, train_test_split

OPTIMIZERS = {"sgd": sn.optim.SGD, "adam": sn.optim.Adam, "adamw": sn.optim.AdamW}


@dataclass
class TrainConfig:
    """Everything a run depends on."""

    layers: tuple[int, ...]
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


@dataclass
class TrainResult:
    model: sn.Module
    optimizer: sn.optim.Optimizer
    architecture: Architecture
    accuracy: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    scaling: dict = field(default_factory=dict)


def load_data(dataset: str, csv: str | None, target: str | None, dtype) -> Dataset:
    """The bundled data set by name, or a user's CSV file (with its target column)."""
    if csv is not None:
        if not target:
            raise ValueError("--csv needs --target naming the label column")
        return load_csv(csv, target, dtype=dtype)
    return load_dataset(dataset, dtype=dtype)


def scaling_of(train: Dataset) -> dict:
    """Feature mean and std of the training split (std 0 → 1), JSON-ready."""
    mean = train.X.astype(np.float64).mean(axis=0)
    std = train.X.astype(np.float64).std(axis=0)
    std[std == 0] = 1.0
    return {"mean": mean.tolist(), "std": std.tolist()}


def scale(X: np.ndarray, scaling: dict) -> np.ndarray:
    mean, std = np.asarray(scaling["mean"]), np.asarray(scaling["std"])
    return np.ascontiguousarray((X - mean) / std, dtype=X.dtype)


def accuracy(model: sn.Module, data: Dataset, scaling: dict, loss: str) -> float:
    """Fraction classified correctly (classification) or −MSE (regression)."""
    out = model(scale(data.X, scaling))
    if data.classes:
        return float((out.argmax(axis=1) == data.y).mean())
    return -float(((out.reshape(data.y.shape) - data.y) ** 2).mean())


def _architecture(config: TrainConfig, data: Dataset) -> Architecture:
    loss = "cross-entropy" if data.classes else "mse"
    outputs = data.classes or 1
    layers = tuple(config.layers)
    if layers[0] != data.X.shape[1] or layers[-1] != outputs:
        raise ValueError(f"--layers {','.join(map(str, layers))} does not fit {data.name}: it "
                         f"has {data.X.shape[1]} features and {outputs} outputs")
    return Architecture(layers, config.activation, loss, config.dtype)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train with one fused compiled step per batch; returns the model and test accuracy."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from "
                         f"{', '.join(OPTIMIZERS)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be positive")
    dtype = np.dtype(config.dtype).type
    data = load_data(config.dataset, config.csv, config.target, dtype)
    train_set, test_set = train_test_split(data, 0.2, config.seed)
    arch = _architecture(config, data)
    sn.manual_seed(config.seed)
    model = arch.model()
    lr = config.lr if config.lr is not None else (1e-3 if config.optimizer != "sgd" else 0.05)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=lr)
    loss_fn = arch.loss_function()
    step = sn.compile(model, loss_fn, optimizer)
    scaling = scaling_of(train_set)
    X = scale(train_set.X, scaling)
    y = train_set.y if data.classes else train_set.y.reshape(len(train_set), -1)
    rng = np.random.default_rng(config.seed)
    result = TrainResult(model, optimizer, arch, 0.0, scaling=scaling)
    metric = "test accuracy" if data.classes else "test −MSE"
    for epoch in range(1, config.epochs + 1):
        losses = [step(X[idx], y[idx]) * len(idx)
                  for idx in batches(len(train_set), config.batch_size, rng)]
        mean_loss = float(np.sum(losses) / len(train_set))
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"epoch {epoch}: the loss became {mean_loss}; lower --lr")
        result.accuracy = accuracy(model, test_set, scaling, arch.loss)
        result.history.append((epoch, mean_loss, result.accuracy))
        log(f"epoch {epoch:3d}  loss {mean_loss:.4f}  {metric} {result.accuracy:.4f}")
    return result


def save_checkpoint(result: TrainResult, config: TrainConfig, path: str) -> None:
    meta = {"architecture": result.architecture.to_dict(), "scaling": result.scaling,
            "dataset": config.dataset if config.csv is None else None, "csv": config.csv,
            "target": config.target, "seed": config.seed, "accuracy": result.accuracy}
    sn.save({"model": result.model.state_dict(), "optimizer": result.optimizer.state_dict(),
             "meta": meta}, path)


def evaluate_checkpoint(path: str, dataset: str = "digits", csv: str | None = None,
                        target: str | None = None) -> float:
    """Rebuild the model from ``path`` alone and score it on the same seeded test split."""
    bundle = sn.load(path)
    if not isinstance(bundle, dict) or "meta" not in bundle or "model" not in bundle:
        raise ValueError(f"{path}: not a symnet training checkpoint (no architecture metadata)")
    meta = bundle["meta"]
    arch = Architecture.from_dict(meta["architecture"])
    model = arch.model()
    model.load_state_dict(bundle["model"])
    data = load_data(dataset, csv, target, np.dtype(arch.dtype).type)
    if data.X.shape[1] != arch.layers[0]:
        raise ValueError(f"{path} expects {arch.layers[0]} features; {data.name} has "
                         f"{data.X.shape[1]}")
    _, test_set = train_test_split(data, 0.2, meta["seed"])
    return accuracy(model.eval(), test_set, meta["scaling"], arch.loss)
