"""Training and evaluation on bundled or CSV data: what ``symnet train`` / ``evaluate`` run.

A fixed seed fixes everything: initial weights, the 80/20 split, the batch order.  The
network is ``--layers`` widths and an activation, or a user's ``--model FILE.py:NAME`` (see
`symnet.app.model_file`; the file runs after the seed is set).  Steps run in training mode
(Dropout draws its masks), scoring in eval mode (Dropout is the identity), so ``evaluate``
gives the accuracy a run printed.  The checkpoint carries the
architecture (or the model file's path and SHA-256), the feature scaling and, for a CSV
file, the feature columns and class labels in its metadata, so ``evaluate`` rebuilds the
model from the checkpoint alone (or it and the model file) and reads another CSV file by
column name.  It also carries the run's `Progress`
(epoch, batch, the batch-order generator's state), so ``resume=True`` continues a killed
run and ends bit-identical to one that was never interrupted.

Example:
    >>> from symnet.app.train import TrainConfig, train
    >>> result = train(TrainConfig(layers=(64, 32, 10), epochs=2), log=lambda line: None)
    >>> 0.5 < result.accuracy <= 1.0
    True
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

import symnet as sn
from symnet.app.architecture import Architecture
from symnet.app.checkpoint import load_model, restore, save_checkpoint
from symnet.app.data import (
    TASKS,
    Dataset,
    batches,
    load_csv,
    load_dataset,
    scale,
    scaling_of,
    train_test_split,
)
from symnet.app.model_file import ModelFile, load
from symnet.app.run import Blueprint, Progress, TrainConfig, TrainResult
from symnet.backends.mpi import is_root, training_step


class Diverged(FloatingPointError):
    """The loss became NaN/Inf; ``result`` holds the parameters of the last finite step."""

    def __init__(self, message: str, result: TrainResult):
        super().__init__(message)
        self.result = result


def load_data(dataset: str, csv: str | None, target: str | None, dtype, task: str | None = None,
              features=None, labels=None) -> Dataset:
    """The bundled data set by name, or a user's CSV file (with its target column).

    ``task``, ``features`` and ``labels`` are `load_csv`'s; a bundled data set is
    classification, and ``task="regression"`` for one is refused.
    """
    if csv is not None:
        if not target:
            raise ValueError("--csv needs --target naming the label column")
        return load_csv(csv, target, dtype=dtype, task=task, features=features, labels=labels)
    if task == "regression":
        raise ValueError(f"--task regression: the bundled data set {dataset!r} is "
                         f"classification; --task is for --csv files")
    return load_dataset(dataset, dtype=dtype)


def check_writable(path: str, flag: str, in_place: bool = False) -> None:
    """Refuse, before a run starts, a path its end could not write (``flag`` names it).

    The folder must exist and be writable (`symnet.io.serialization.save_file` writes a
    temporary file there and renames it); ``in_place`` writers also need an existing file
    to be writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    problem = None
    if os.path.isdir(path):
        problem = "it is a directory"
    elif not os.path.exists(folder):
        problem = f"the directory {folder} does not exist"
    elif not os.path.isdir(folder):
        problem = f"{folder} is not a directory"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"the directory {folder} is not writable"
    elif in_place and os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    if problem:
        raise ValueError(f"{flag} {path}: cannot write there: {problem}")


def accuracy(model: sn.Module, data: Dataset, scaling: dict) -> float:
    """Fraction classified correctly (classification) or −MSE (regression), in eval mode:
    Dropout is the identity while scoring, and each module's mode is restored after."""
    with evaluating(model):
        return _score(model(scale(data.X, scaling)), data)


@contextmanager
def evaluating(model: sn.Module) -> Iterator[sn.Module]:
    """``model`` in eval mode meanwhile; afterwards each module is in the mode it was in (so
    a step compiled in training mode finds the same equations again).

    Example:
        >>> net = sn.Sequential(sn.Linear(2, 2), sn.Dropout(0.5))
        >>> with evaluating(net):
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[1].training
        (True, True)
    """
    modes = [(module, module.training) for _, module in model.named_modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _score(out: np.ndarray, data: Dataset) -> float:
    if data.classes:
        return float((out.argmax(axis=1) == data.y).mean())
    return -float(((out.reshape(data.y.shape) - data.y) ** 2).mean())


def _on_host(model: sn.Module, blueprint: Blueprint) -> sn.Module:
    """``model`` itself on the CPU; else a CPU copy, so scoring is one host forward pass."""
    if getattr(model, "device", "cpu") == "cpu":
        return model
    host = blueprint.model()
    host.load_state_dict(model.state_dict())  # state_dict() is always host arrays
    return host


def _architecture(config: TrainConfig, data: Dataset) -> Architecture:
    loss = "cross-entropy" if data.classes else "mse"
    outputs = data.classes or 1
    layers = tuple(config.layers)
    if layers[0] != data.X.shape[1] or layers[-1] != outputs:
        raise ValueError(f"--layers {','.join(map(str, layers))} does not fit {data.name}: it "
                         f"has {data.X.shape[1]} features and {outputs} outputs")
    return Architecture(layers, config.activation, loss, config.dtype)


def _network(config: TrainConfig, data: Dataset) -> tuple[sn.Module, Blueprint]:
    """A fresh network for ``data`` (parameters drawn now) and what built it."""
    if config.model is None:
        arch = _architecture(config, data)
        return arch.model(), arch
    loaded = load(config.model)
    model = loaded.module.to(np.dtype(config.dtype).type)
    record = ModelFile.record(config.model, loaded, "cross-entropy" if data.classes else "mse",
                              config.dtype)  # its widths: read off the traced network
    wanted = data.classes or 1
    if (record.inputs, record.outputs) != (data.X.shape[1], wanted):
        raise ValueError(f"--model {config.model} does not fit {data.name}: it takes "
                         f"{record.inputs} features and gives {record.outputs} outputs; "
                         f"{data.name} has {data.X.shape[1]} features and {wanted} outputs")
    return model, record


def _check(config: TrainConfig, save: str | None, checkpoint_every: int | None,
           resume: bool) -> None:
    if (not config.layers) == (config.model is None):
        raise ValueError("give the network as layers (--layers) or as a model file (--model), "
                         "one of the two")
    if config.optimizer not in sn.optim.BY_NAME:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from "
                         f"{', '.join(sn.optim.BY_NAME)}")
    if config.task is not None and config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose from {', '.join(TASKS)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be positive")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"--max-steps must be positive, got {config.max_steps}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, got "
                         f"{checkpoint_every}")
    for flag, used in (("--checkpoint-every", checkpoint_every is not None),
                       ("--resume", resume)):
        if used and not save:
            raise ValueError(f"{flag} needs --save PATH, the checkpoint file it writes/reads")


def _compile(model: sn.Module, loss, optimizer, device: str, distributed: bool = False):
    """The fused step; its finite check keeps a NaN step from touching the parameters."""
    if distributed:  # rank 0's parameters on every rank, then the same checked update
        return training_step(model, loss, optimizer, device)
    try:
        if device != "cpu":
            model.to(device)  # parameters (and then optimizer state) live there from now on
        return sn.compile(model, loss, optimizer, device=device, check_finite=True)
    except RuntimeError as error:  # CUDA missing: the CLI reports ValueErrors in one line
        raise ValueError(f"--device {device}: {error}") from None


def _is_root(config: TrainConfig) -> bool:
    """False only on ranks other than 0 of a ``--distributed`` run."""
    if not config.distributed:
        return True
    return is_root()


def _sync(step) -> None:
    """Bring device-resident parameters home (a CUDA step) before reading them."""
    sync = getattr(step, "sync", None)
    if sync is not None:
        sync()


class _EpochBar:
    """A tqdm bar for one epoch on stderr, showing the running loss and samples/s.

    Shown when ``enabled`` (None: when stderr is a terminal) and tqdm, the optional
    ``progress`` extra, is installed; otherwise every method does nothing.
    """

    def __init__(self, enabled: bool | None, total: int, initial: int, desc: str):
        self.bar = None
        if not (sys.stderr.isatty() if enabled is None else enabled):
            return
        try:  # the optional progress extra, imported only when a bar is wanted
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="sample",
                        unit_scale=True, leave=False, dynamic_ncols=True, file=sys.stderr)

    def advance(self, samples: int, mean_loss: float) -> None:
        if self.bar is not None:
            self.bar.update(samples)
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # the epoch's final loss and rate, however fast it ran
            self.bar.close()


def train(config: TrainConfig, log: Callable[[str], None] = print, *, save: str | None = None,
          checkpoint_every: int | None = None, resume: bool = False,
          progress: bool | None = None) -> TrainResult:
    """Train with one fused compiled step per batch; returns the model and test accuracy.

    ``save`` is written at the end, every ``checkpoint_every`` steps, and when the loss
    turns NaN/Inf (then with the last finite parameters, and `Diverged` is raised).
    ``resume`` continues from ``save``.  ``progress``: a tqdm bar per epoch (None: only
    when stderr is a terminal); the one-line-per-epoch log is written either way.
    """
    _check(config, save, checkpoint_every, resume)
    root = _is_root(config)
    if not root:  # another rank of --distributed: it trains; rank 0 prints and writes files
        log, progress = (lambda line: None), False
    if save and root:
        check_writable(save, "--save")  # now, not after the whole run
    dtype = np.dtype(config.dtype).type
    data = load_data(config.dataset, config.csv, config.target, dtype, config.task)
    if data.guess:
        task = "classification" if data.classes else "regression"
        other = "regression" if data.classes else "classification"
        log(f"task: {task}, guessed: {data.guess} (--task {other} to override)")
    train_set, test_set = train_test_split(data, 0.2, config.seed)
    n, size = len(train_set), config.batch_size
    per_epoch = math.ceil(n / size)
    sn.manual_seed(config.seed)
    model, blueprint = _network(config, data)
    optimizer = sn.optim.make(config.optimizer, model.parameters(), config.lr)
    rng = np.random.default_rng(config.seed)
    state = Progress(rng=rng.bit_generator.state)
    if resume:
        state = restore(save, config, blueprint, model, optimizer, per_epoch)
    model.train()  # the step's kernel is the training mode's: Dropout draws its masks
    step = _compile(model, blueprint.loss_function(), optimizer, config.device,
                    config.distributed)
    scaling = scaling_of(train_set)
    X = scale(train_set.X, scaling)
    y = train_set.y if data.classes else train_set.y.reshape(len(train_set), -1)
    result = TrainResult(model, optimizer, blueprint, 0.0, state.history, scaling, progress=state,
                         features=data.features, labels=data.labels)
    metric = "test accuracy" if data.classes else "test −MSE"

    def checkpoint() -> None:
        _sync(step)
        if root:
            save_checkpoint(result, config, save, state)

    stopped = False
    while state.epoch <= config.epochs and not stopped:
        rng.bit_generator.state = state.rng
        order = list(batches(n, size, rng))
        bar = _EpochBar(progress, n, min(state.batch * size, n),
                        f"epoch {state.epoch}/{config.epochs}")
        try:
            for b in range(state.batch, per_epoch):
                if config.max_steps and optimizer.step_count >= config.max_steps:
                    stopped = True
                    break
                idx = order[b]
                try:
                    loss = step(X[idx], y[idx])  # a NaN/Inf step is refused, not applied
                except FloatingPointError as error:
                    raise _diverged(error, state, per_epoch, result, save, checkpoint) from None
                state.batch, state.loss_sum = b + 1, state.loss_sum + loss * len(idx)
                result.losses.append(loss)
                bar.advance(len(idx), state.loss_sum / min(state.batch * size, n))
                if save and checkpoint_every and optimizer.step_count % checkpoint_every == 0:
                    checkpoint()
            else:
                stopped = bool(config.max_steps) and optimizer.step_count >= config.max_steps
        finally:
            bar.close()
        if stopped and state.batch < per_epoch:
            log(f"stopped at step {optimizer.step_count} (--max-steps), epoch {state.epoch} "
                f"batch {state.batch}/{per_epoch}")
            break
        _sync(step)
        mean_loss = state.loss_sum / n
        result.accuracy = accuracy(_on_host(model, blueprint), test_set, scaling)
        state.history.append((state.epoch, mean_loss, result.accuracy))
        log(f"epoch {state.epoch:3d}  loss {mean_loss:.4f}  {metric} {result.accuracy:.4f}")
        state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
        state.rng = rng.bit_generator.state
    _sync(step)
    result.accuracy = accuracy(_on_host(model, blueprint), test_set, scaling)
    if save and root:
        save_checkpoint(result, config, save, state)
    return result


def _diverged(error: FloatingPointError, state: Progress, per_epoch: int, result: TrainResult,
              save: str | None, checkpoint: Callable[[], None]) -> Diverged:
    """Stop on a NaN/Inf loss; with ``save``, write the last finite state there first."""
    if save:
        checkpoint()
    kept = f"; the last finite parameters are saved in {save}" if save else ""
    return Diverged(f"epoch {state.epoch}, batch {state.batch + 1}/{per_epoch}: "
                    f"{' '.join(str(error).split())}{kept}", result)


def evaluate_checkpoint(path: str, dataset: str = "digits", csv: str | None = None,
                        target: str | None = None) -> float:
    """Rebuild the model from ``path`` alone and score it on the same seeded test split.

    A CSV file is read through the checkpoint's record: columns by name, labels mapped to
    the class indices they had in training, the target column by default.  Checkpoints that
    predate that record read the columns in file order, with the width checked.
    """
    trained = load_model(path)
    meta, blueprint = trained.meta, trained.blueprint
    data = load_data(dataset, csv, target or meta.target, np.dtype(blueprint.dtype).type,
                     meta.task, meta.features, meta.labels)
    outputs = blueprint.outputs
    if data.X.shape[1] != blueprint.inputs:
        raise ValueError(f"{path} expects {blueprint.inputs} features; {data.name} has "
                         f"{data.X.shape[1]}")
    if (data.classes > 0) != (meta.task == "classification") or data.classes > outputs:
        kind = f"{data.classes} classes" if data.classes else "a regression target"
        raise ValueError(f"{path} is a {meta.task} model with {outputs} outputs; "
                         f"{data.name} has {kind}")
    _, test_set = train_test_split(data, 0.2, meta.seed)
    return _score(trained(test_set.X), test_set)
