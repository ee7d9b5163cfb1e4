"""``symnet train --checkpoint-every K --resume``: a killed run ends bit-identical to an
uninterrupted one; a checkpoint holds what resuming needs; a mismatched resume is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.app.train import TrainConfig, train
from symnet.cli import main
from symnet.io.serialization import load_file

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "digits", "--layers", "64,16,10", "--optimizer", "adam", "--seed", "4",
         "--batch-size", "32"]
TRAIN_SIZE, BATCH = 1437, 32  # digits' 80 % split
PER_EPOCH = -(-TRAIN_SIZE // BATCH)  # 45 steps


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def assert_same_file(a: Path, b: Path) -> None:
    """Every tensor equal byte for byte, and the metadata (history, progress, RNG) equal."""
    (ta, ma), (tb, mb) = load_file(a), load_file(b)
    assert list(ta) == list(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].tobytes() == tb[key].tobytes(), key
    assert ma == mb


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.Popen([sys.executable, "-m", "symnet", "train", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_training_process_resumes_bit_identical(tmp_path, capsys):
    epochs = ["--epochs", "12", "--checkpoint-every", "2"]
    killed = tmp_path / "killed.safetensors"
    proc = _cli(*SMALL, *epochs, "--save", str(killed))
    deadline = time.monotonic() + 120
    while not killed.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up or write a last checkpoint
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err}"
    at_kill = sn.load(killed)
    steps_done = at_kill["optimizer"]["step"]
    assert 2 <= steps_done < 12 * PER_EPOCH and steps_done % 2 == 0

    resumed = _cli(*SMALL, *epochs, "--save", str(killed), "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    reference = tmp_path / "reference.safetensors"
    assert run(["train", *SMALL, "--epochs", "12", "--save", str(reference)]) == 0
    assert_same_file(killed, reference)
    # it went on from the killed epoch (not from epoch 1) and ended as the reference did
    epochs_run = [line for line in out.splitlines() if line.startswith("epoch")]
    expected = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert epochs_run == expected[at_kill["meta"]["progress"]["epoch"] - 1:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "ck.safetensors"
    train(TrainConfig(layers=(64, 16, 10), epochs=3, seed=4), log=lambda line: None,
          save=str(path))
    return path


@pytest.mark.parametrize("stop", [1, 13, PER_EPOCH, PER_EPOCH + 1, 2 * PER_EPOCH + 30])
def test_resume_from_any_step_is_bit_identical(tmp_path, reference, stop):
    """Stop after ``stop`` steps (mid-epoch, at an epoch boundary, ...), then resume."""
    path = tmp_path / "ck.safetensors"
    train(TrainConfig(layers=(64, 16, 10), epochs=3, seed=4, max_steps=stop),
          log=lambda line: None, save=str(path), checkpoint_every=5)
    assert sn.load(path)["optimizer"]["step"] == stop
    train(TrainConfig(layers=(64, 16, 10), epochs=3, seed=4), log=lambda line: None,
          save=str(path), resume=True)
    assert_same_file(path, reference)


def test_more_epochs_after_a_finished_run_equal_a_longer_run(tmp_path):
    short, long = tmp_path / "short.safetensors", tmp_path / "long.safetensors"
    quiet = {"log": lambda line: None}
    train(TrainConfig(layers=(64, 8, 10), epochs=1, seed=2), save=str(short), **quiet)
    train(TrainConfig(layers=(64, 8, 10), epochs=2, seed=2), save=str(short), resume=True,
          **quiet)
    train(TrainConfig(layers=(64, 8, 10), epochs=2, seed=2), save=str(long), **quiet)
    assert_same_file(short, long)


def test_checkpoint_holds_step_count_position_and_the_batch_order_state(tmp_path):
    """Checked against numpy's own generator: the state is that of ``default_rng(seed)``
    after one permutation per finished epoch."""
    path = tmp_path / "ck.safetensors"
    stop = PER_EPOCH + 10
    train(TrainConfig(layers=(64, 8, 10), epochs=3, seed=7, optimizer="sgd", max_steps=stop),
          log=lambda line: None, save=str(path), checkpoint_every=4)
    bundle = sn.load(path)
    progress = bundle["meta"]["progress"]
    assert bundle["optimizer"]["step"] == stop and bundle["optimizer"]["type"] == "SGD"
    assert (progress["epoch"], progress["batch"]) == (2, 10)
    rng = np.random.default_rng(7)
    rng.permutation(TRAIN_SIZE)  # epoch 1's order
    assert progress["rng"] == rng.bit_generator.state
    assert len(progress["history"]) == 1 and progress["history"][0][0] == 1
    assert bundle["meta"]["config"]["layers"] == (64, 8, 10)


def test_periodic_checkpoints_are_written_every_k_steps(tmp_path, monkeypatch):
    import symnet.app.train as train_module

    written = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", lambda result, *rest: (
        written.append(result.optimizer.step_count), real(result, *rest))[1])
    train(TrainConfig(layers=(64, 8, 10), epochs=1, seed=0), log=lambda line: None,
          save=str(tmp_path / "ck.safetensors"), checkpoint_every=10)
    assert written == [10, 20, 30, 40, PER_EPOCH]  # every 10 steps, then the final save


@pytest.mark.parametrize("change, needle", [
    (["--layers", "64,32,10"], "--layers 64,16,10 there, 64,32,10 here"),
    (["--optimizer", "sgd"], "--optimizer adam there, sgd here"),
    (["--seed", "5"], "--seed 4 there, 5 here"),
    (["--batch-size", "16"], "--batch-size 32 there, 16 here"),
    (["--dtype", "float64"], "--dtype float32 there, float64 here"),
])
def test_resume_with_other_settings_is_refused(tmp_path, capsys, change, needle):
    path = tmp_path / "ck.safetensors"
    assert run(["train", *SMALL, "--epochs", "1", "--max-steps", "3", "--save", str(path)]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    argv = ["train", *SMALL, "--epochs", "2", "--save", str(path), "--resume"]
    if change[0] in argv:
        flag = argv.index(change[0])
        argv[flag:flag + 2] = change
    else:
        argv += change
    assert run(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert "epoch" not in out and path.read_bytes() == before


@pytest.mark.parametrize("argv, needle", [
    (["--resume"], "--resume needs --save"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --save"),
    (["--save", "{tmp}/ck.safetensors", "--checkpoint-every", "0"], "positive"),
    (["--save", "{tmp}/missing.safetensors", "--resume"], "no checkpoint at"),
    (["--save", "{tmp}/plain.safetensors", "--resume"], "not a resumable"),
])
def test_bad_resume_arguments_are_one_line_errors(tmp_path, capsys, argv, needle):
    sn.save(sn.Sequential(sn.Linear(64, 10)).state_dict(), str(tmp_path / "plain.safetensors"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run(["train", *SMALL, "--epochs", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
