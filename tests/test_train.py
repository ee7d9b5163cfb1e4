"""`symnet train` / `symnet evaluate`: digits to ≥ 97 %, checkpoints that rebuild the model."""

from __future__ import annotations

import numpy as np
import pytest

from symnet.app.data import load_digits, train_test_split
from symnet.app.train import TrainConfig, evaluate_checkpoint, save_checkpoint, train
from symnet.cli import main


def _last_accuracy(text: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith("epoch")]
    return float(lines[-1].split()[-1])


def test_digits_reaches_97_percent_and_evaluate_reproduces_it(tmp_path, capsys):
    checkpoint = tmp_path / "ck.safetensors"
    code = main(["train", "--dataset", "digits", "--layers", "64,64,10", "--activation", "relu",
                 "--optimizer", "adam", "--epochs", "30", "--save", str(checkpoint)])
    trained = _last_accuracy(capsys.readouterr().out)
    assert code == 0 and trained >= 0.97
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "digits"]) == 0
    assert capsys.readouterr().out.strip() == f"test accuracy {trained:.4f}"


def test_evaluate_counts_correct_predictions_independently(tmp_path):
    """The reported accuracy equals a count done here with numpy on the raw split."""
    config = TrainConfig(layers=(64, 16, 10), epochs=3, seed=3)
    result = train(config, log=lambda line: None)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(result, config, str(path))
    _, test = train_test_split(load_digits(), 0.2, seed=3)
    mean, std = np.asarray(result.scaling["mean"]), np.asarray(result.scaling["std"])
    logits = result.model(((test.X - mean) / std).astype(np.float32))
    expected = float(np.mean(np.argmax(logits, axis=1) == test.y))
    assert evaluate_checkpoint(str(path)) == pytest.approx(expected, abs=0)


def test_same_seed_same_run_different_seed_different_run():
    a = train(TrainConfig(layers=(64, 8, 10), epochs=2, seed=1), log=lambda line: None)
    b = train(TrainConfig(layers=(64, 8, 10), epochs=2, seed=1), log=lambda line: None)
    c = train(TrainConfig(layers=(64, 8, 10), epochs=2, seed=2), log=lambda line: None)
    for (_, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert np.array_equal(pa.data, pb.data)
    assert not np.array_equal(a.model.parameters()[0].data, c.model.parameters()[0].data)


def test_csv_classification(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    labels = (X[:, 0] + X[:, 1] > 0).astype(int) + 5  # labels 5 and 6 → classes 0 and 1
    path = tmp_path / "points.csv"
    rows = ["a,b,c,label"] + [f"{x[0]},{x[1]},{x[2]},{k}" for x, k in zip(X, labels)]
    path.write_text("\n".join(rows) + "\n")
    code = main(["train", "--csv", str(path), "--target", "label", "--layers", "3,8,2",
                 "--epochs", "20", "--lr", "0.01"])
    assert code == 0 and _last_accuracy(capsys.readouterr().out) >= 0.9


@pytest.mark.parametrize("argv, needle", [
    (["train", "--layers", "64,32,9", "--epochs", "1"], "10 outputs"),
    (["train", "--layers", "64,,10"], "comma-separated"),
    (["train", "--layers", "64,10", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--layers", "64,10", "--csv", "nope.csv"], "--target"),
    (["evaluate", "--checkpoint", "missing.safetensors"], "missing.safetensors"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err and "Traceback" not in err


def test_evaluate_rejects_a_file_that_is_not_a_training_checkpoint(tmp_path, capsys):
    import symnet as sn

    path = tmp_path / "plain.safetensors"
    sn.save(sn.Sequential(sn.Linear(64, 10)).state_dict(), str(path))
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    assert "not a symnet training checkpoint" in capsys.readouterr().err
