"""The CLI's files, second pass: every bad checkpoint, CSV file or output path is one line on
stderr and exit status 2, found before anything is allocated, trained or scored.

Expected scores are counted here with numpy from the tensors and the raw CSV rows (an
independent forward pass, split and label mapping), never taken from symnet's own scoring.
``tests/data/old-*.safetensors`` were written by symnet before checkpoints recorded feature
columns and class labels (commit 22419c4): ``old-points`` by
``symnet train --csv old-points.csv --target kind --layers 3,8,3 --epochs 15 --lr 0.01``,
``old-digits`` by ``symnet train --dataset digits --layers 64,4,10 --epochs 2``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.app.checkpoint import load_model
from symnet.app.data import load_digits
from symnet.app.train import TrainConfig, evaluate_checkpoint, train
from symnet.cli import main
from symnet.io.serialization import load_file, save_file

DATA = Path(__file__).resolve().parent / "data"
DIGITS = ["--dataset", "digits", "--layers", "64,16,10"]
NESTED = "[" * 100_000 + "]" * 100_000
CLASSES = [5.0, 6.0, 7.0]  # old-points.csv's labels, sorted: class indices 0, 1, 2
FEATURES = ["width", "height", "depth"]  # its feature columns, in file order


def run(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("symnet: error: "), err
    return lines[0]


def refused(argv: list[str], capsys, *needles: str) -> str:
    """Run ``argv``; it must exit 2 with one ``symnet: error:`` line holding ``needles``."""
    code = run(argv)
    out, err = capsys.readouterr()
    message = one_line_error(err)
    assert code == 2, (code, out, err)
    for needle in needles:
        assert needle in message, (needle, message)
    return out


def edit_file(path: Path, meta=None, optimizer=None, tensors=None, raw=None) -> None:
    """Rewrite a checkpoint in place: ``meta``/``optimizer`` edit the decoded JSON parts,
    ``tensors`` the tensor dict, ``raw`` the header's metadata strings; the file stays valid
    safetensors, so only symnet's own checks stand between it and the model."""
    stored, header = load_file(path)
    for key, edit in (("symnet.meta", meta), ("symnet.optimizer", optimizer)):
        if edit is not None:
            part = json.loads(header[key])
            header[key] = json.dumps(edit(part) or part)
    if tensors is not None:
        tensors(stored)
        header["symnet.keys"] = json.dumps(list(stored))
    if raw is not None:
        raw(header)
    save_file(stored, path, header)


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "ck.safetensors"
    train(TrainConfig(layers=(64, 16, 10), epochs=1, seed=0), log=lambda line: None,
          save=str(path))
    return path


@pytest.fixture
def ck(trained_digits, tmp_path) -> Path:
    """A fresh copy of a digits checkpoint, to tamper with."""
    return Path(shutil.copy(trained_digits, tmp_path / "ck.safetensors"))


# --- numpy, independently of symnet's scoring --------------------------------------------------

def forward(tensors: dict, X: np.ndarray, mean, std) -> np.ndarray:
    """The ReLU MLP's outputs for raw ``X``: scaled, then ``x·Wᵀ + b`` per layer."""
    h = (X.astype(np.float64) - np.asarray(mean)) / np.asarray(std)
    count = len(tensors) // 2
    for k in range(count):
        h = h @ tensors[f"{2 * k}.weight"].astype(np.float64).T + tensors[f"{2 * k}.bias"]
        if k < count - 1:
            h = np.maximum(h, 0)
    return h


def read_rows(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().split()
    return lines[0].split(","), np.array([[float(c) for c in line.split(",")]
                                          for line in lines[1:]])


def split_rows(n: int, seed: int) -> np.ndarray:
    """The rows of the seeded 80/20 test split: the last ⌈0.2 n⌉ of one permutation."""
    return np.random.default_rng(seed).permutation(n)[n - math.ceil(n * 0.2):]


def expected_accuracy(ck: Path, csv: Path, classes: list[float]) -> float:
    """Accuracy on ``csv``'s seeded test split, its columns matched by name to the training
    file's (``FEATURES``) and its labels to ``classes`` (the training file's sorted labels)."""
    bundle = sn.load(ck)
    meta = bundle["meta"]
    header, table = read_rows(csv)
    X = table[:, [header.index(c) for c in FEATURES]]
    y = np.array([classes.index(v) for v in table[:, header.index("kind")]])
    rows = split_rows(len(table), meta["seed"])
    out = forward(bundle["model"], X[rows].astype(np.float32), meta["scaling"]["mean"],
                  meta["scaling"]["std"])
    return float(np.mean(np.argmax(out, axis=1) == y[rows]))


# --- 6: metadata that is not what symnet writes ------------------------------------------------

@pytest.mark.parametrize("key", ["symnet.meta", "symnet.optimizer", "symnet.parts",
                                 "symnet.keys"])
def test_deeply_nested_metadata_is_one_line(ck, capsys, key):
    edit_file(ck, raw=lambda header: header.update({key: NESTED}))
    refused(["evaluate", "--checkpoint", ck], capsys, str(ck), "nested too deeply")


def test_a_deeply_nested_safetensors_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.safetensors"
    header = ('{"w": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="not a valid safetensors file: header JSON is nested"):
        sn.load(path)
    refused(["evaluate", "--checkpoint", path], capsys, "nested too deeply")


def _set(*keys_and_value):
    """An edit that sets ``meta[k1][k2]… = value`` (``keys_and_value[-1]`` is the value)."""
    *keys, value = keys_and_value

    def edit(meta):
        node = meta
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _drop(key):
    def edit(meta):
        del meta[key]
    return edit


# one row per kind of wrong value: a type, a range, an allowed value, a field missing or extra
SCHEMA = [
    (_drop("architecture"), "meta lacks the field 'architecture'"),
    (_drop("scaling"), "meta lacks the field 'scaling'"),
    (lambda meta: [meta], "meta must be an object, got a list"),
    (_set("architecture", [64, 16, 10]), "meta.architecture must be an object, got a list"),
    (_set("scaling", [[0.0] * 64, [1.0] * 64]), "meta.scaling must be an object, got a list"),
    (_set("seed", 0.5), "meta.seed must be an integer, got 0.5"),
    (_set("seed", True), "meta.seed must be an integer, got True"),
    (_set("seed", -1), "seed must be a finite number ≥ 0, got -1"),
    (_set("architecture", "layers", [64, "16", 10]),
     "meta.architecture.layers[1] must be an integer, got '16'"),
    (_set("architecture", "layers", [64, 0, 10]), "layer width 1 must be a positive integer"),
    (_set("architecture", "activation", "swish"), "unknown activation 'swish'"),
    (_set("architecture", "loss", "hinge"), "unknown loss 'hinge'"),
    (_set("architecture", "dtype", "float16"), "dtype must be float32 or float64"),
    (_set("architecture", "dropout", 0.5), "meta.architecture has unknown fields 'dropout'"),
    (_set("scaling", "std", 3, 0), "meta.scaling: std[3] must be a positive finite number"),
    (_set("scaling", "mean", [0.0] * 63), "mean has 63 entries, std 64"),
    (_set("scaling", "mean", 0, float("nan")), "mean[0] must be finite, got nan"),
    (_set("scaling", "mean", 1, "x"), "meta.scaling.mean[1] must be a number, got 'x'"),
    (_set("dataset", "cifar"), "dataset must be one of 'digits', 'mnist5k', got 'cifar'"),
    (_set("dataset", None), "exactly one of dataset and csv must be set"),
    (_set("target", "label"), "target must be set exactly when csv is"),
    (_set("accuracy", "high"), "meta.accuracy must be a number, got 'high'"),
    (_set("extra", 1), "meta has unknown fields 'extra'"),
    (_set("task", "ranking"), "meta.task must be one of 'classification', 'regression'"),
    (_set("task", "regression"), "task 'regression' does not fit the loss 'cross-entropy'"),
    (_set("features", ["a", "b"]), "features has 2 entries, the architecture needs 64"),
    (_set("labels", list(range(9)) + [0]), "labels holds duplicates"),
    (_set("labels", {"0": 0}), "meta.labels must be a list, got an object"),
    (_set("config", "batch_size", 0), "batch_size must be a finite number ≥ 1, got 0"),
    (_set("config", "optimizer", "rmsprop"), "optimizer must be one of 'sgd', 'adam', 'adamw'"),
    (_set("config", "lr", "fast"), "meta.config.lr must be a number, got 'fast'"),
    (_set("progress", "epoch", 0), "epoch must be a finite number ≥ 1, got 0"),
    (_set("progress", "epoch", 1.5), "meta.progress.epoch must be an integer, got 1.5"),
    (_set("progress", "loss_sum", float("inf")), "loss_sum must be finite"),
    (_set("progress", "rng", "bit_generator", "MT19937"),
     "meta.progress.rng.bit_generator must be one of 'PCG64', got 'MT19937'"),
    (_set("progress", "rng", "state", "inc", -1), "inc must be in [0, 2**128)"),
    (_set("progress", "rng", "has_uint32", 2), "has_uint32 must be one of 0, 1, got 2"),
    (_set("progress", "history", []), "history must list the finished epochs 1..1"),
    (_set("progress", "history", [{"__tuple__": [1, 0.5]}]),
     "meta.progress.history[0] must be a list of 3 items, got 2"),
]


@pytest.mark.parametrize(("edit", "problem"), SCHEMA)
def test_metadata_is_checked_against_the_schema_before_use(ck, capsys, edit, problem):
    edit_file(ck, meta=edit)
    refused(["evaluate", "--checkpoint", ck], capsys, f"{ck}: damaged checkpoint metadata: ",
            problem)


def test_a_directory_as_checkpoint_is_one_line(tmp_path, capsys):
    refused(["evaluate", "--checkpoint", tmp_path], capsys, f"{tmp_path}: is a directory")
    refused(["evaluate", "--checkpoint", DATA / "old-digits.safetensors", "--csv", tmp_path,
             "--target", "y"], capsys, f"{tmp_path}: Is a directory")


@pytest.fixture(scope="module")
def resumable(tmp_path_factory) -> dict[str, Path]:
    """Per optimizer, a checkpoint stopped after 3 steps, to resume."""
    folder = tmp_path_factory.mktemp("resumable")
    paths = {}
    for name in ("sgd", "adam"):
        paths[name] = folder / f"{name}.safetensors"
        train(TrainConfig(layers=(64, 16, 10), optimizer=name, epochs=1, max_steps=3),
              log=lambda line: None, save=str(paths[name]))
    return paths


def _tensor(key, change):
    return lambda tensors: tensors.__setitem__(key, change(tensors[key]))


def _nan_entry(t):
    t = t.copy()
    t.flat[0] = np.nan
    return t


@pytest.mark.parametrize(("name", "edits", "problem"), [
    ("sgd", {"optimizer": _set("defaults", "momentum", 0.9)}, "momentum 0.9 there, 0 here"),
    ("sgd", {"optimizer": _set("defaults", "nesterov", True)}, "nesterov True there, False"),
    ("sgd", {"optimizer": _set("defaults", "nesterov", 0)}, "nesterov 0 there, False here"),
    ("adam", {"optimizer": _set("defaults", "eps", 1e-3)}, "eps 0.001 there, 1e-08 here"),
    ("adam", {"optimizer": _set("defaults", "betas", [0.9])}, "betas a list there"),
    ("adam", {"optimizer": _set("defaults", "momentum", 0.9)}, "momentum 0.9 there, absent"),
    ("adam", {"optimizer": _drop("defaults")}, "expected an object with type, defaults"),
    ("adam", {"optimizer": _set("defaults", [])}, "defaults must be an object, got a list"),
    ("adam", {"optimizer": _set("type", "AdamW")}, "holds 'AdamW' optimizer state"),
    ("adam", {"optimizer": _set("step", 2.5)}, "step 2.5 does not match the progress"),
    ("adam", {"optimizer": _set("step", "3")}, "step '3' does not match the progress"),
    ("adam", {"optimizer": _set("step", 999)}, "step 999 does not match the progress"),
    ("adam", {"meta": _set("progress", "batch", 2)}, "step 3 does not match the progress"),
    ("adam", {"meta": _set("progress", "batch", 500)}, "batch 500 is past the epoch's 45"),
    ("adam", {"tensors": _tensor("optimizer.state.0.m", _nan_entry)},
     "'state.0.m' holds 1 non-finite value"),
    ("adam", {"tensors": _tensor("optimizer.state.1.v", lambda t: t.astype(np.float64))},
     "'state.1.v' is float64, expected float32"),
    ("adam", {"tensors": lambda ts: ts.pop("optimizer.state.3.v")}, "'state.3.v' is missing"),
    ("adam", {"tensors": lambda ts: ts.update({"optimizer.state.9.m": np.zeros(2, np.float32)})},
     "'state.9.m' is not part of it"),
    ("adam", {"tensors": _tensor("model.2.bias", _nan_entry)}, "'2.bias' holds 1 non-finite"),
])
def test_tampered_optimizer_state_is_refused_on_resume(resumable, tmp_path, capsys, name,
                                                        edits, problem):
    path = Path(shutil.copy(resumable[name], tmp_path / "ck.safetensors"))
    edit_file(path, **edits)
    before = path.read_bytes()
    out = refused(["train", *DIGITS, "--optimizer", name, "--epochs", "1", "--save", path,
                   "--resume"], capsys, str(path), problem)
    assert "epoch" not in out and path.read_bytes() == before


def test_an_untampered_checkpoint_still_resumes(resumable, tmp_path, capsys):
    """The control for the table above: the same command on the file as written."""
    path = Path(shutil.copy(resumable["sgd"], tmp_path / "ck.safetensors"))
    assert run(["train", *DIGITS, "--optimizer", "sgd", "--epochs", "1", "--save", path,
                "--resume"]) == 0
    assert sn.load(path)["optimizer"]["step"] == 45


# --- 7: files that load but are wrong ----------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_not_scored(ck, capsys, value):
    edit_file(ck, tensors=_tensor("model.0.weight", lambda t: np.where(
        np.arange(t.size).reshape(t.shape) % 7 == 0, value, t).astype(t.dtype)))
    count = math.ceil(16 * 64 / 7)
    refused(["evaluate", "--checkpoint", ck], capsys,
            f"{ck}: the model: '0.weight' holds {count} non-finite values (NaN or Inf)")


def test_an_oversized_architecture_is_refused_before_allocating(ck):
    edit_file(ck, meta=_set("architecture", "layers", [64, 3000, 3000, 10]))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"'0\.weight' has shape \(16, 64\), expected "
                                             r"\(3000, 64\)"):
            evaluate_checkpoint(str(ck))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a refused file"  # 3000²: 36


@pytest.mark.parametrize(("edit", "problem"), [
    (_tensor("model.0.weight", lambda t: t.astype(np.float64)),
     "'0.weight' is float64, expected float32"),
    (_tensor("model.0.bias", lambda t: t[:8]), "'0.bias' has shape (8,), expected (16,)"),
    (lambda ts: ts.pop("model.2.weight"), "'2.weight' is missing"),
    (lambda ts: ts.update({"model.4.weight": np.zeros((2, 2), np.float32)}),
     "'4.weight' is not part of it"),
])
def test_tensors_that_do_not_fit_the_architecture_are_named(ck, capsys, edit, problem):
    edit_file(ck, tensors=edit)
    refused(["evaluate", "--checkpoint", ck], capsys,
            f"{ck}: the model does not fit its declared architecture: {problem}")


# --- 8: evaluation data that does not match the model ------------------------------------------


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> dict[str, Path]:
    """old-points.csv and a checkpoint trained on it by this symnet."""
    folder = tmp_path_factory.mktemp("points")
    csv = Path(shutil.copy(DATA / "old-points.csv", folder / "points.csv"))
    ck = folder / "points.safetensors"
    assert main(["train", "--csv", str(csv), "--target", "kind", "--layers", "3,8,3",
                 "--epochs", "15", "--lr", "0.01", "--save", str(ck)]) == 0
    return {"csv": csv, "ck": ck}


def _write_columns(source: Path, target: Path, columns: list[str], keep=lambda row: True,
                   extra: dict[str, str] | None = None) -> Path:
    header, table = read_rows(source)
    lines = [",".join(columns + list(extra or {}))]
    for row in table:
        if keep(row):
            cells = {c: repr(float(v)) for c, v in zip(header, row)}
            cells["kind"] = str(int(row[header.index("kind")]))
            lines.append(",".join([cells[c] for c in columns] + list((extra or {}).values())))
    target.write_text("\n".join(lines) + "\n")
    return target


def _score(argv, capsys) -> str:
    assert run(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out.strip()


def test_evaluation_maps_csv_columns_by_name(points, tmp_path, capsys):
    shuffled = _write_columns(points["csv"], tmp_path / "shuffled.csv",
                              ["kind", "depth", "width", "height"])
    expected = expected_accuracy(points["ck"], points["csv"], CLASSES)
    assert expected_accuracy(points["ck"], shuffled, CLASSES) == expected  # same rows, by name
    for csv in (points["csv"], shuffled):
        assert _score(["evaluate", "--checkpoint", points["ck"], "--csv", csv, "--target",
                       "kind"], capsys) == f"test accuracy {expected:.4f}"
    # --target defaults to the checkpoint's
    assert _score(["evaluate", "--checkpoint", points["ck"], "--csv", shuffled],
                  capsys) == f"test accuracy {expected:.4f}"


def test_a_class_missing_from_the_evaluation_file_keeps_the_class_indices(points, tmp_path,
                                                                          capsys):
    header, _ = read_rows(points["csv"])
    without_5 = _write_columns(points["csv"], tmp_path / "no5.csv", header,
                               keep=lambda row: row[header.index("kind")] != 5)
    expected = expected_accuracy(points["ck"], without_5, CLASSES)
    relabelled = expected_accuracy(points["ck"], without_5, [6.0, 7.0, 99.0])  # the old bug
    assert expected > 0.8 and relabelled < 0.5
    assert _score(["evaluate", "--checkpoint", points["ck"], "--csv", without_5, "--target",
                   "kind"], capsys) == f"test accuracy {expected:.4f}"


@pytest.mark.parametrize(("columns", "extra", "problem"), [
    (["width", "height", "kind"], None, "this file lacks ['depth']"),
    (["width", "height", "depth", "kind"], {"colour": "1"},
     "this file has columns the model does not know: ['colour']"),
    (["width", "height", "kind"], {"Depth": "1"},
     "this file lacks ['depth'] and has columns the model does not know: ['Depth']"),
])
def test_missing_or_extra_feature_columns_are_refused(points, tmp_path, capsys, columns, extra,
                                                      problem):
    csv = _write_columns(points["csv"], tmp_path / "other.csv", columns, extra=extra)
    refused(["evaluate", "--checkpoint", points["ck"], "--csv", csv, "--target", "kind"], capsys,
            f"{csv}: the model's feature columns are ['width', 'height', 'depth']; {problem}")


def test_an_unknown_label_is_refused(points, tmp_path, capsys):
    text = points["csv"].read_text().splitlines()
    text[4] = text[4].rsplit(",", 1)[0] + ",9"
    csv = tmp_path / "nine.csv"
    csv.write_text("\n".join(text) + "\n")
    refused(["evaluate", "--checkpoint", points["ck"], "--csv", csv, "--target", "kind"], capsys,
            f"{csv}: line 5, column 'kind': label 9 is not one of the model's classes [5, 6, 7]")


def test_load_model_applies_the_training_scaling(points):
    model = load_model(points["ck"])
    header, table = read_rows(points["csv"])
    X = table[:, :3]
    bundle = sn.load(points["ck"])
    raw = forward(bundle["model"], X.astype(np.float32), bundle["meta"]["scaling"]["mean"],
                  bundle["meta"]["scaling"]["std"])
    np.testing.assert_allclose(model(X), raw, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(X), np.array(CLASSES)[raw.argmax(axis=1)])
    unscaled = forward(bundle["model"], X, np.zeros(3), np.ones(3))
    assert not np.allclose(model(X), unscaled, atol=1e-3)  # the scaling does matter here


def test_load_model_scales_digits_as_evaluate_does(trained_digits):
    digits = load_digits()
    rows = split_rows(len(digits), 0)
    bundle = sn.load(trained_digits)
    out = forward(bundle["model"], digits.X[rows], bundle["meta"]["scaling"]["mean"],
                  bundle["meta"]["scaling"]["std"])
    expected = float(np.mean(out.argmax(axis=1) == digits.y[rows]))
    model = load_model(trained_digits)
    assert float(np.mean(model.predict(digits.X[rows]) == digits.y[rows])) == expected > 0.3
    assert evaluate_checkpoint(str(trained_digits)) == expected
    with pytest.raises(ValueError, match=r"expects 64 features per row, got .* shape \(2, 63\)"):
        model(np.zeros((2, 63)))


# --- old checkpoints, written before features and labels were recorded -------------------------

def test_an_old_csv_checkpoint_still_evaluates_by_position(tmp_path, capsys):
    ck, csv = DATA / "old-points.safetensors", DATA / "old-points.csv"
    assert "features" not in sn.load(ck)["meta"]
    expected = expected_accuracy(ck, csv, CLASSES)
    assert _score(["evaluate", "--checkpoint", ck, "--csv", csv, "--target", "kind"],
                  capsys) == f"test accuracy {expected:.4f}"
    narrow = _write_columns(csv, tmp_path / "narrow.csv", ["width", "height", "kind"])
    refused(["evaluate", "--checkpoint", ck, "--csv", narrow, "--target", "kind"], capsys,
            f"{ck} expects 3 features; narrow has 2")


def test_an_old_digits_checkpoint_evaluates_and_resumes(tmp_path, capsys):
    old = DATA / "old-digits.safetensors"
    bundle = sn.load(old)
    digits = load_digits()
    rows = split_rows(len(digits), 0)
    out = forward(bundle["model"], digits.X[rows], bundle["meta"]["scaling"]["mean"],
                  bundle["meta"]["scaling"]["std"])
    expected = float(np.mean(out.argmax(axis=1) == digits.y[rows]))
    assert _score(["evaluate", "--checkpoint", old], capsys) == f"test accuracy {expected:.4f}"
    resumed, straight = tmp_path / "resumed.safetensors", tmp_path / "straight.safetensors"
    shutil.copy(old, resumed)
    small = ["train", "--dataset", "digits", "--layers", "64,4,10", "--epochs", "3"]
    assert run([*small, "--save", resumed, "--resume"]) == 0
    assert run([*small, "--save", straight]) == 0
    capsys.readouterr()
    a, b = sn.load(resumed), sn.load(straight)
    # The checkpoint's 90 steps were taken by the kernels of its day; a product summed in a
    # loop since (`codegen.fusion.inline_thin_products`) rounds differently, so the straight
    # run's first 90 steps agree with them to float32 rounding, not bit for bit (resuming
    # within one version is: tests/test_train_resume.py).  A resume from the wrong step,
    # batch order or optimizer state is off by far more.
    for key in a["model"]:
        scale = np.abs(b["model"][key]).max()
        np.testing.assert_allclose(a["model"][key], b["model"][key], rtol=0,
                                   atol=1e-5 * scale, err_msg=key)
    assert a["optimizer"]["step"] == b["optimizer"]["step"] == 135


# --- 9: the CSV task ---------------------------------------------------------------------------

def _csv(path: Path, targets) -> Path:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(len(targets), 2)).round(3)
    path.write_text("a,b,y\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(X, targets)))
    return path


def test_an_integer_regression_target_is_guessed_regression(tmp_path, capsys):
    targets = [str(v) for v in np.random.default_rng(0).integers(0, 104, 300)]
    distinct = len(set(targets))
    csv = _csv(tmp_path / "ages.csv", targets)
    ck = tmp_path / "ck.safetensors"
    argv = ["train", "--csv", csv, "--target", "y", "--epochs", "1", "--save", ck]
    assert run([*argv, "--layers", "2,8,1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"task: regression, guessed: target 'y' holds {distinct} distinct whole "
                      f"numbers, more than 20 (--task classification to override)")
    assert "test −MSE" in out[1] and sn.load(ck)["meta"]["architecture"]["loss"] == "mse"
    assert _score(["evaluate", "--checkpoint", ck, "--csv", csv], capsys).startswith("test MSE")
    assert run([*argv, "--layers", f"2,8,{distinct}", "--task", "classification"]) == 0
    out = capsys.readouterr().out
    assert "guessed" not in out and "test accuracy" in out
    assert sn.load(ck)["meta"]["labels"] == tuple(sorted({int(t) for t in targets}))


def test_float_formatted_class_labels_are_guessed_classification(tmp_path, capsys):
    csv = _csv(tmp_path / "flags.csv", ["0.0", "1.0"] * 40)
    argv = ["train", "--csv", csv, "--target", "y", "--epochs", "1"]
    assert run([*argv, "--layers", "2,8,2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("task: classification, guessed: target 'y' holds 2 distinct whole "
                      "numbers (--task regression to override)")
    assert "test accuracy" in out[1]
    assert run([*argv, "--layers", "2,8,1", "--task", "regression"]) == 0
    out = capsys.readouterr().out
    assert "guessed" not in out and "test −MSE" in out


def test_task_regression_for_a_bundled_data_set_is_refused(capsys):
    refused(["train", *DIGITS, "--task", "regression"], capsys, "--task regression",
            "'digits' is classification")


# --- 10a: output paths are checked before training ---------------------------------------------

@pytest.mark.parametrize(("flag", "where", "problem"), [
    ("--save", "missing/ck.safetensors", "the directory {tmp}/missing does not exist"),
    ("--save", "file/ck.safetensors", "{tmp}/file is not a directory"),
    ("--save", ".", "it is a directory"),
    ("--plot", "missing/curves.png", "the directory {tmp}/missing does not exist"),
    ("--plot", "file/curves.png", "{tmp}/file is not a directory"),
])
def test_an_unwritable_output_path_fails_before_training(tmp_path, capsys, flag, where,
                                                         problem):
    (tmp_path / "file").write_text("")
    path = tmp_path / where
    out = refused(["train", *DIGITS, "--epochs", "1", flag, path], capsys,
                  f"{flag} {path}: cannot write there: {problem.format(tmp=tmp_path)}")
    assert out == ""  # not one epoch ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
@pytest.mark.parametrize("flag", ["--save", "--plot"])
def test_a_read_only_directory_fails_before_training(tmp_path, capsys, flag):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    out = refused(["train", *DIGITS, "--epochs", "1", flag, folder / "out"], capsys,
                  f"the directory {folder} is not writable")
    assert out == ""
