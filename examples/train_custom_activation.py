"""A researcher's activation, written as a formula, derived, verified and trained natively.

mish(x) = x·tanh(softplus(x)): SymPy derives its derivative, `verify` proves the backward
pass, and `sn.compile` trains it on digits with the PyTorch-style loop and the fused step.

Run: .venv/bin/python examples/train_custom_activation.py
"""

import numpy as np
import sympy as sp

import symnet as sn
from symnet.app.data import batches, load_digits, train_test_split

x = sp.Symbol("x")
mish = sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)


def main() -> float:
    small = sn.Sequential(sn.Linear(3, 2), mish, sn.Linear(2, 2))
    derivation = sn.derive(small, sn.CrossEntropyLoss())
    print(derivation)
    report = derivation.verify()
    print(report)
    if not report:
        return 0.0

    train, test = train_test_split(load_digits(), 0.2, seed=0)
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(64, 64), sn.Activation("mish", mish.expr, mish.var),
                          sn.Linear(64, 10))
    loss_fn = sn.CrossEntropyLoss()
    opt = sn.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for idx in batches(len(train), 32, rng):  # one epoch the PyTorch way
        opt.zero_grad()
        loss = loss_fn(model(train.X[idx]), train.y[idx])
        loss.backward()
        opt.step()
    step = sn.compile(model, loss_fn, opt)  # then the fused step
    for epoch in range(2, 21):
        losses = [step(train.X[idx], train.y[idx]) for idx in batches(len(train), 32, rng)]
        accuracy = float((model(test.X).argmax(axis=1) == test.y).mean())
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    raise SystemExit(0 if main() >= 0.95 else 1)
