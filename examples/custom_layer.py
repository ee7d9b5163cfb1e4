"""Your own layers as formulas: a residual LayerNorm block and a GLU, derived, printed,
proved and trained.

    python examples/custom_layer.py
"""

import numpy as np

import symnet as sn


class Block(sn.Module):
    """x + fc2(gelu(fc1(norm(x)))): a residual path around a normalised MLP."""

    def __init__(self, d, hidden):
        super().__init__()
        self.norm = sn.LayerNorm(d)
        self.fc1 = sn.Linear(d, hidden)
        self.fc2 = sn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(sn.gelu(self.fc1(self.norm(x))))


class GLU(sn.Module):
    """A new layer with its own parameters: σ(W·X) ⊙ (V·X); samples are columns."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.W = sn.Parameter(sn.init.uniform((d_out, d_in), bound=d_in ** -0.5))
        self.V = sn.Parameter(sn.init.uniform((d_out, d_in), bound=d_in ** -0.5))

    def forward(self, X):
        return sn.sigmoid(self.W @ X) * (self.V @ X)


def main() -> None:
    sn.manual_seed(0)
    small = sn.Sequential(sn.Linear(3, 4), Block(4, 6), GLU(4, 4), sn.Linear(4, 2))
    d = sn.derive(small, sn.CrossEntropyLoss())
    print(small)
    print(d)
    print("verified:", bool(d.verify()))

    # Train a wider one on two noisy blobs, fused into one compiled AdamW step.
    sn.manual_seed(1)
    model = sn.Sequential(sn.Linear(8, 32), Block(32, 64), GLU(32, 32), sn.Dropout(0.1),
                          sn.Linear(32, 2))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 512)
    X = (rng.normal(size=(512, 8)) + 1.5 * y[:, None]).astype(np.float32)
    step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.AdamW(model.parameters(), lr=3e-3))
    for _epoch in range(20):
        for k in range(0, 512, 64):
            loss = step(X[k:k + 64], y[k:k + 64])
    model.eval()
    accuracy = float((model(X).argmax(1) == y).mean())
    print(f"loss {loss:.4f}, training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
