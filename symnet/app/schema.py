"""What a training checkpoint's metadata may hold, checked field by field before any is used.

``symnet train`` writes JSON beside the tensors: the architecture (or the ``--model`` file it
ran), the feature scaling, the feature columns and class labels, the run's settings and where
it stands.  A file comes from outside, so `parse` reads that JSON into the frozen dataclasses
below: each field's type comes from its annotation, its range and allowed values from
``__post_init__``.  The error names the field (``meta.scaling.std[3]``) and the problem, so
nothing later meets a list where it expected an object, a seed of 0.5 or a missing key.

Example:
    >>> parse(Scaling, {"mean": [0.5, 1], "std": [2, 1]}, "meta.scaling")
    Scaling(mean=(0.5, 1.0), std=(2.0, 1.0))
    >>> parse(Scaling, {"mean": [0.5], "std": [0]}, "meta.scaling")
    Traceback (most recent call last):
    ...
    ValueError: meta.scaling: std[0] must be a positive finite number, got 0.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Literal

from symnet.app.architecture import ACTIVATIONS, Architecture
from symnet.app.data import DATASETS
from symnet.app.model_file import ModelFile, split
from symnet.optim import BY_NAME

__all__ = ["RunConfig", "Scaling", "TrainingMeta", "describe", "parse", "task_of"]

TASKS = ("classification", "regression")


def parse(kind, data, where: str):
    """``data`` (parsed JSON) as ``kind``: a dataclass, ``int``, ``float``, ``str``, ``bool``,
    a ``Literal``, ``tuple[X, ...]``, ``tuple[X, Y]`` or a union of those (``X | None``).

    JSON lists become tuples; ``where`` names the value in errors (``meta.progress.epoch``).
    The recursion follows the annotations, never the data, so its depth is the schema's.
    """
    if dataclasses.is_dataclass(kind):
        return _record(kind, data, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return parse(option, data, where)
            except ValueError:
                pass
        return parse(options[-1], data, where)
    if origin is Literal:
        if any(type(data) is type(a) and data == a for a in args):
            return data
        raise _wrong(where, "one of " + ", ".join(map(repr, args)), data)
    if origin is tuple:
        return _sequence(args, data, where)
    return _scalar(kind, data, where)


def _scalar(kind, data, where: str):
    if kind is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            try:
                return float(data)
            except OverflowError:  # an integer too large for a float
                pass
        raise _wrong(where, "a number", data)
    if kind is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        raise _wrong(where, "an integer", data)
    if kind in (str, bool):
        if isinstance(data, kind):
            return data
        raise _wrong(where, "a string" if kind is str else "true or false", data)
    raise TypeError(f"schema: unsupported annotation {kind!r} at {where}")


def _sequence(args: tuple, data, where: str) -> tuple:
    if not isinstance(data, (list, tuple)):
        raise _wrong(where, "a list", data)
    if len(args) == 2 and args[1] is Ellipsis:
        kinds = [args[0]] * len(data)
    elif len(data) != len(args):
        raise ValueError(f"{where} must be a list of {len(args)} items, got {len(data)}")
    else:
        kinds = list(args)
    return tuple(parse(k, x, f"{where}[{i}]") for i, (k, x) in enumerate(zip(kinds, data)))


def _record(cls, data, where: str):
    if not isinstance(data, dict):
        raise _wrong(where, "an object", data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ValueError(f"{where} has unknown fields {', '.join(map(describe, unknown))}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = parse(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where} lacks the field {name!r}")
    try:
        return cls(**values)
    except ValueError as error:  # the record's own range and cross-field checks
        raise ValueError(f"{where}: {error}") from None


def describe(value) -> str:
    """A JSON value in a few words: scalars as themselves (cut to 40 characters), containers
    by kind, never by a recursive ``repr`` (a file may nest them as deep as json allows).

    Example:
        >>> describe(0.5), describe([[1]]), describe({"a": 1}), describe(None)
        ('0.5', 'a list', 'an object', 'null')
    """
    kind = {dict: "an object", list: "a list", tuple: "a list", type(None): "null"}.get(type(value))
    if kind is not None:
        return kind
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong(where: str, expected: str, data) -> ValueError:
    return ValueError(f"{where} must be {expected}, got {describe(data)}")


def _at_least(name: str, value: int | float, low: int | float) -> None:
    if not (value >= low and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number ≥ {low}, got {value!r}")


def _one_of(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass(frozen=True)
class Scaling:
    """The training split's feature mean and std (a constant feature's std stored as 1)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} entries, std {len(self.std)}")
        for i, m in enumerate(self.mean):
            if not math.isfinite(m):
                raise ValueError(f"mean[{i}] must be finite, got {m!r}")
        for i, s in enumerate(self.std):
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"std[{i}] must be a positive finite number, got {s!r}")


@dataclass(frozen=True)
class RunConfig:
    """The settings a resumed run must share with its checkpoint (see `symnet.app.checkpoint`).

    ``model`` (``FILE.py:NAME``, absent before it existed) replaces ``layers``, then empty.
    """

    layers: tuple[int, ...]
    activation: str
    optimizer: str
    lr: float | None
    batch_size: int
    seed: int
    dataset: str
    csv: str | None
    target: str | None
    dtype: Literal["float32", "float64"]
    model: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None:
            split(self.model)
            if self.layers:
                raise ValueError(f"layers must be empty with a model file, got {self.layers}")
        elif len(self.layers) < 2 or min(self.layers) < 1:
            raise ValueError(f"layers must be two or more positive widths, got {self.layers}")
        _one_of("activation", self.activation, ACTIVATIONS)
        _one_of("optimizer", self.optimizer, BY_NAME)
        if self.lr is not None:
            _at_least("lr", self.lr, 0)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("seed", self.seed, 0)


@dataclass(frozen=True)
class PCG64Words:
    state: int
    inc: int

    def __post_init__(self) -> None:
        for name in ("state", "inc"):
            if not 0 <= getattr(self, name) < 2**128:
                raise ValueError(f"{name} must be in [0, 2**128), got {getattr(self, name)}")


@dataclass(frozen=True)
class RngState:
    """numpy's ``PCG64.state``: the batch-order generator at the start of an epoch."""

    bit_generator: Literal["PCG64"]
    state: PCG64Words
    has_uint32: Literal[0, 1]
    uinteger: int

    def __post_init__(self) -> None:
        if not 0 <= self.uinteger < 2**32:
            raise ValueError(f"uinteger must be in [0, 2**32), got {self.uinteger}")

    def to_numpy(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ProgressRecord:
    """`symnet.app.run.Progress` as stored: ``history`` holds the finished epochs 1, 2, …"""

    epoch: int
    batch: int
    rng: RngState
    loss_sum: float
    history: tuple[tuple[int, float, float], ...]
    #: symnet's generator (dropout masks) when the checkpoint was written; None before
    masks: RngState | None = None

    def __post_init__(self) -> None:
        _at_least("epoch", self.epoch, 1)
        _at_least("batch", self.batch, 0)
        if not math.isfinite(self.loss_sum):
            raise ValueError(f"loss_sum must be finite, got {self.loss_sum!r}")
        if [row[0] for row in self.history] != list(range(1, self.epoch)):
            raise ValueError(f"history must list the finished epochs 1..{self.epoch - 1} "
                             f"in order, got epochs {[row[0] for row in self.history]}")


def task_of(loss: str) -> str:
    """The task a built-in loss trains for: ``mse`` regression, the others classification."""
    return "regression" if loss == "mse" else "classification"


@dataclass(frozen=True)
class TrainingMeta:
    """The ``meta`` part of a ``symnet train`` checkpoint.

    The network is an ``architecture`` or, for ``--model FILE.py:NAME``, a ``model_file``
    (then ``architecture`` is null); `blueprint` is whichever it is.  ``features`` (the CSV's
    feature columns, in the model's input order) and ``labels`` (the class values, in
    class-index order) are None for the bundled data sets and in checkpoints written before
    they were recorded; ``task`` is then the architecture's loss's.
    """

    architecture: Architecture | None
    scaling: Scaling
    dataset: str | None
    csv: str | None
    target: str | None
    seed: int
    accuracy: float
    config: RunConfig | None = None
    progress: ProgressRecord | None = None
    task: Literal["classification", "regression"] | None = None
    features: tuple[str, ...] | None = None
    labels: tuple[int | float, ...] | None = None
    model_file: ModelFile | None = None

    @property
    def blueprint(self) -> Architecture | ModelFile:
        """What builds the network: the `Architecture` or the `ModelFile`."""
        return self.architecture or self.model_file

    def __post_init__(self) -> None:
        _at_least("seed", self.seed, 0)
        if (self.architecture is None) == (self.model_file is None):
            raise ValueError("exactly one of architecture and model_file must be set")
        if self.config is not None and (self.config.model is None) != (self.model_file is None):
            raise ValueError("config.model must be set exactly when model_file is")
        if (self.dataset is None) == (self.csv is None):
            raise ValueError("exactly one of dataset and csv must be set, got "
                             f"dataset={self.dataset!r}, csv={self.csv!r}")
        if self.dataset is not None:
            _one_of("dataset", self.dataset, DATASETS)
        if (self.target is None) != (self.csv is None):
            raise ValueError("target must be set exactly when csv is")
        inputs, outputs = self.blueprint.inputs, self.blueprint.outputs
        if len(self.scaling.mean) != inputs:
            raise ValueError(f"scaling has {len(self.scaling.mean)} features, the architecture "
                             f"{inputs} inputs")
        task = task_of(self.blueprint.loss)
        if self.task is not None and self.task != task:
            raise ValueError(f"task {self.task!r} does not fit the loss "
                             f"{self.blueprint.loss!r}")
        object.__setattr__(self, "task", task)
        if self.features is not None:
            self._check_names("features", self.features, inputs)
        if self.labels is not None:
            if task != "classification":
                raise ValueError("labels are recorded for classification only")
            self._check_names("labels", self.labels, outputs)
            for i, value in enumerate(self.labels):
                if not math.isfinite(value):
                    raise ValueError(f"labels[{i}] must be finite, got {value!r}")

    @staticmethod
    def _check_names(name: str, values: tuple, count: int) -> None:
        if len(values) != count:
            raise ValueError(f"{name} has {len(values)} entries, the architecture needs {count}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} holds duplicates: {list(values)}")
