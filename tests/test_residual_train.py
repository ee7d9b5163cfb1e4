"""A residual LayerNorm + Dropout network from a file, trained and evaluated through the CLI.

The test accuracy is recomputed by numpy from the checkpoint's tensors alone, with no dropout
(eval mode), and must be what ``train`` printed and what ``evaluate`` prints: had training
scored the test split in training mode, Dropout(0.5) would have dropped half the block's
units at random and ``train`` would have printed another number.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

import symnet as sn
from symnet.app.data import load_digits, train_test_split
from symnet.app.model_file import load, widths
from symnet.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "residual_mlp.py"

NET = """\
import symnet as sn


class Block(sn.Module):
    def __init__(self):
        super().__init__()
        self.norm = sn.LayerNorm(32)
        self.fc1 = sn.Linear(32, 64)
        self.fc2 = sn.Linear(64, 32)
        self.drop = sn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.fc2(sn.gelu(self.fc1(self.norm(x)))))


class Net(sn.Module):
    def __init__(self):
        super().__init__()
        self.embed = sn.Linear(64, 32)
        self.block = Block()
        self.head = sn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.block(self.embed(x)))
"""


def run(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def numpy_net(bundle: dict, X: np.ndarray) -> np.ndarray:
    """``NET``'s outputs in eval mode for raw features ``X``, from the checkpoint alone."""
    w = {k: v.astype(np.float64) for k, v in bundle["model"].items()}
    scaling = bundle["meta"]["scaling"]

    def linear(h, key):
        return h @ w[f"{key}.weight"].T + w[f"{key}.bias"]

    def layer_norm(h, key):
        centred = h - h.mean(axis=1, keepdims=True)
        std = np.sqrt((centred ** 2).mean(axis=1, keepdims=True) + 1e-5)
        return centred / std * w[f"{key}.weight"] + w[f"{key}.bias"]

    def gelu(z):
        return 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))

    h = linear((X - np.asarray(scaling["mean"])) / np.asarray(scaling["std"]), "embed")
    h = h + linear(gelu(linear(layer_norm(h, "block.norm"), "block.fc1")), "block.fc2")
    return linear(h, "head")


def test_a_residual_dropout_model_scores_in_eval_mode_and_evaluate_agrees(tmp_path, capsys):
    net, ck = tmp_path / "net.py", tmp_path / "ck.safetensors"
    net.write_text(NET)
    assert run(["train", "--dataset", "digits", "--model", f"{net}:Net", "--optimizer",
                "adamw", "--lr", "0.01", "--batch-size", "64", "--epochs", "2", "--seed", "0",
                "--save", ck]) == 0
    printed = re.findall(r"epoch +2 +loss \S+ +test accuracy (\S+)", capsys.readouterr().out)
    bundle = sn.load(ck)
    _, test = train_test_split(load_digits(), 0.2, bundle["meta"]["seed"])
    expected = float(np.mean(numpy_net(bundle, test.X).argmax(axis=1) == test.y))
    assert expected > 0.5  # 46 steps: far above chance (0.1)
    assert printed == [f"{expected:.4f}"]
    assert run(["evaluate", "--checkpoint", ck, "--dataset", "digits"]) == 0
    assert capsys.readouterr().out == f"test accuracy {expected:.4f}\n"


def test_the_example_fits_mnist5k_and_its_tiny_variant_prints_the_layernorm_backward(capsys):
    model = load(f"{EXAMPLE}:ResidualMLP").module
    assert widths(model) == (784, 10)
    assert [type(m).__name__ for m in model.layers()].count("LayerNorm") == 2
    assert run(["equations", "--model", f"{EXAMPLE}:tiny"]) == 0
    lines = {line.strip() for line in capsys.readouterr().out.splitlines()}
    for line in ("drstd1 = 1ᵀ·(dxhat1 ⊙ xc1)", "dmu1 = −1ᵀ·dxc1", "dZ3 = 10·dD2 ⊙ M2/9",
                 "dA1 = (1/4)·1·dmu1 + dxc1 + dH1"):  # the residual path's gradient, added
        assert line in lines
