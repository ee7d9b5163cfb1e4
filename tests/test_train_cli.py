"""``symnet train``'s daily-use flags: NaN stops, ``--plot``, the progress bar, ``--device``,
``--max-steps``, and an example of each in ``--help``."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.app.train import Diverged, TrainConfig, train
from symnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train", "--dataset", "digits", "--layers", "64,16,10", "--seed", "1"]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("symnet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def epoch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("epoch")]


# --- NaN / Inf ---------------------------------------------------------------------------------

def test_diverging_run_exits_2_and_keeps_the_last_finite_parameters(tmp_path, capsys):
    path = tmp_path / "ck.safetensors"
    argv = ["--optimizer", "sgd", "--lr", "1e6", "--epochs", "3"]
    assert run([*SMALL, *argv, "--save", str(path)]) == 2
    out, err = capsys.readouterr()
    message = one_line_error(err)
    epoch = int(re.search(r"epoch (\d+)", message).group(1))
    failed = int(re.search(r"step (\d+)", message).group(1))
    assert str(path) in message and epoch == (failed - 1) // 45 + 1
    bundle = sn.load(path)
    assert bundle["optimizer"]["step"] == failed - 1  # the NaN step was not applied
    for name, value in bundle["model"].items():
        assert np.isfinite(value).all(), name
    # the same run stopped cleanly before the bad step holds exactly these parameters
    before = train(TrainConfig(layers=(64, 16, 10), optimizer="sgd", lr=1e6, epochs=3, seed=1,
                               max_steps=failed - 1), log=lambda line: None)
    for name, value in before.model.state_dict().items():
        assert value.tobytes() == bundle["model"][name].tobytes(), name


def test_diverged_carries_the_finite_result():
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+/45") as caught:
        train(TrainConfig(layers=(64, 16, 10), optimizer="sgd", lr=1e6, epochs=1, seed=1),
              log=lambda line: None)
    assert all(np.isfinite(p.data).all() for p in caught.value.result.model.parameters())


SIMULATED_DIVERGENCE = """
import json, sys
from symnet.app.train import Diverged, TrainConfig, train
config = TrainConfig(layers=(64, 8, 10), optimizer="sgd", lr=1e10, epochs=1, batch_size=8,
                     seed=0, device="cuda")
try:
    train(config, log=lambda line: None, save=sys.argv[1])
except Diverged as error:
    result = error.result
    print(json.dumps({"message": str(error), "steps": result.optimizer.step_count,
                      "model": {k: v.tolist() for k, v in result.model.state_dict().items()}}))
"""


def test_a_diverging_cuda_run_stops_with_the_last_finite_parameters(tmp_path):
    """The CUDA step's finite check refuses the NaN step: the checkpoint written on the way out
    holds the parameters after the last applied step, as a CPU run stopped there has them."""
    path = tmp_path / "ck.safetensors"
    done = _python(SIMULATED_DIVERGENCE, os.environ.get("NUMBA_ENABLE_CUDASIM", "1"),
                   str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    failed = int(re.search(r"train step (\d+): the loss became", run["message"]).group(1))
    assert failed >= 2 and "were left unchanged" in run["message"] and str(path) in run["message"]
    bundle = sn.load(path)
    assert bundle["optimizer"]["step"] == run["steps"] == failed - 1  # the NaN step: refused
    before = train(TrainConfig(layers=(64, 8, 10), optimizer="sgd", lr=1e10, epochs=1,
                               batch_size=8, seed=0, max_steps=failed - 1), log=lambda line: None)
    for name, expected in before.model.state_dict().items():
        for where, value in (("checkpoint", bundle["model"][name]),
                             ("Diverged.result", np.asarray(run["model"][name], np.float32))):
            assert np.isfinite(value).all(), f"{where} {name}"
            np.testing.assert_allclose(value, expected, rtol=1e-5,
                                       atol=1e-5 * np.abs(expected).max(), err_msg=where)


# --- --plot ------------------------------------------------------------------------------------

def png_image(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines, checking signature, chunk CRCs and IEND by hand."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and color in (2, 6)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * (3 if color == 2 else 4))
    return width, height, raw


def test_plot_writes_a_real_png(tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert run([*SMALL, "--epochs", "3", "--plot", str(png)]) == 0
    assert f"plotted {png}" in capsys.readouterr().out
    data = png.read_bytes()
    width, height, raw = png_image(data)
    assert (width, height) == (900, 350) and len(data) > 10_000
    assert len(set(raw)) > 20  # lines, labels and ticks, not a blank canvas


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert run([*SMALL, "--epochs", "1", "--plot", str(tmp_path / "c.png")]) == 2
    out, err = capsys.readouterr()
    assert "--plot needs matplotlib" in one_line_error(err) and out == ""
    assert not (tmp_path / "c.png").exists()


# --- progress ----------------------------------------------------------------------------------

def test_terminal_gets_a_tqdm_bar_with_loss_and_throughput(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run([*SMALL, "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    lines = epoch_lines(out)
    assert len(lines) == 2  # the per-epoch summary is still printed
    for k, line in enumerate(lines, start=1):
        bar = err[err.index(f"epoch {k}/2"):]
        loss = line.split()[3]
        assert f"loss={loss}" in bar[:bar.index(f"epoch {k + 1}/2") if k < 2 else None]
    assert "sample/s" in err and "1.44k/1.44k" in err


def test_pipe_gets_one_line_per_epoch_and_no_bar(capsys):
    assert run([*SMALL, "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(epoch_lines(out)) == 2


def test_without_tqdm_a_terminal_gets_one_line_per_epoch(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run([*SMALL, "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(epoch_lines(out)) == 2


def test_progress_parameter_forces_the_bar(capsys):
    train(TrainConfig(layers=(64, 8, 10), epochs=1), log=lambda line: None, progress=True)
    assert "epoch 1/1" in capsys.readouterr().err


# --- --max-steps, --help -----------------------------------------------------------------------

def test_max_steps_stops_mid_epoch(tmp_path, capsys):
    path = tmp_path / "ck.safetensors"
    assert run([*SMALL, "--epochs", "2", "--max-steps", "7", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stopped at step 7 (--max-steps), epoch 1 batch 7/45" in out and not epoch_lines(out)
    assert sn.load(path)["optimizer"]["step"] == 7


def test_help_has_an_example_of_each_new_flag(capsys):
    assert run(["train", "--help"]) == 0
    out = capsys.readouterr().out
    options, examples = out.split("examples:")
    for flag in ("--checkpoint-every", "--resume", "--plot", "--device", "--max-steps"):
        assert flag in options
        assert any(line.strip().startswith("symnet train") and flag in line
                   for line in examples.splitlines()), flag


# --- --device ----------------------------------------------------------------------------------

SIMULATED_RUN = """
import json
from symnet.app.train import TrainConfig, train
runs = {}
for device in ("cpu", "cuda"):
    config = TrainConfig(layers=(64, 8, 10), epochs=1, batch_size=8, seed=0, device=device,
                         max_steps=3)  # the simulator runs a Python thread per CUDA thread
    result = train(config, log=lambda line: None)
    runs[device] = {"losses": result.losses, "accuracy": result.accuracy,
                    "params": [p.data.tolist() for p in result.model.parameters()]}
print(json.dumps(runs))
"""


def _python(code: str, simulator: str, *args: str) -> subprocess.CompletedProcess:
    # The simulator must be chosen before Numba is imported: a fresh interpreter.
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": simulator, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cuda_run_in_the_simulator_follows_the_cpu_loss_curve():
    done = _python(SIMULATED_RUN, os.environ.get("NUMBA_ENABLE_CUDASIM", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert len(cpu["losses"]) == len(cuda["losses"]) == 3
    np.testing.assert_allclose(cuda["losses"], cpu["losses"], rtol=1e-5)
    assert cpu["losses"][-1] < cpu["losses"][0]  # it trained
    for mine, theirs in zip(cuda["params"], cpu["params"]):  # synced back before evaluating
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    assert cuda["accuracy"] == pytest.approx(cpu["accuracy"], abs=1 / 360)


def test_cuda_without_a_gpu_is_a_one_line_error():
    code = ("from symnet.cli import main; raise SystemExit(main(['train', '--layers', "
            "'64,8,10', '--epochs', '1', '--max-steps', '1', '--device', 'cuda']))")
    done = _python(code, "0")
    if done.returncode == 0:  # a machine with a GPU: the run simply works
        assert "stopped at step 1" in done.stdout
    else:
        assert done.returncode == 2 and "--device cuda: " in one_line_error(done.stderr)
