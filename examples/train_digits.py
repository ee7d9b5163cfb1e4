"""Train a 64-64-10 ReLU network on the bundled digits with the fused compiled step.

Run: .venv/bin/python examples/train_digits.py
"""

import numpy as np

import symnet as sn
from symnet.app.data import batches, load_digits, train_test_split


def main() -> float:
    train, test = train_test_split(load_digits(), 0.2, seed=0)
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(64, 64), sn.ReLU(), sn.Linear(64, 10))
    opt = sn.optim.Adam(model.parameters(), lr=1e-3)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    rng = np.random.default_rng(0)
    for epoch in range(1, 31):
        losses = [step(train.X[idx], train.y[idx]) for idx in batches(len(train), 32, rng)]
        accuracy = float((model(test.X).argmax(axis=1) == test.y).mean())
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    raise SystemExit(0 if main() >= 0.97 else 1)
