"""A residual MLP with LayerNorm and Dropout for MNIST, as a ``--model`` file.

    symnet train --dataset mnist5k --model examples/residual_mlp.py:ResidualMLP \\
        --optimizer adamw --batch-size 64 --epochs 30 --save residual.safetensors
    symnet evaluate --checkpoint residual.safetensors --dataset mnist5k
    symnet equations --model examples/residual_mlp.py:tiny   # the block's backward, readable

Each block is pre-norm, ``x + drop(fc2(gelu(fc1(norm(x)))))``: the residual path carries
``x`` (and its gradient) past the block unchanged, so the block only learns a correction; a
last LayerNorm steadies the features the classifier reads.  Dropout is active in the
training step and the identity when ``symnet train`` scores the test split (eval mode).
"""

import symnet as sn


class Block(sn.Module):
    """``x + drop(fc2(gelu(fc1(norm(x)))))``: a normalised MLP on a residual path."""

    def __init__(self, width: int, hidden: int, p: float = 0.1):
        super().__init__()
        self.norm = sn.LayerNorm(width)
        self.fc1 = sn.Linear(width, hidden)
        self.fc2 = sn.Linear(hidden, width)
        self.drop = sn.Dropout(p)

    def forward(self, x):
        return x + self.drop(self.fc2(sn.gelu(self.fc1(self.norm(x)))))


class ResidualMLP(sn.Module):
    """784 pixels (dropout 0.2) → 128 features (GELU) → residual blocks (hidden 256) →
    LayerNorm → 10 classes.

    The defaults fit mnist5k, so ``--model examples/residual_mlp.py:ResidualMLP`` builds it
    with no arguments.  ``p_in`` drops input pixels and ``p`` each block's output.  With
    4,000 training images the stem matters: without the input dropout and the GELU after
    ``embed`` the model ends below the plain 784-128-10 MLP (see the README).
    """

    def __init__(self, inputs: int = 784, width: int = 128, hidden: int = 256,
                 classes: int = 10, blocks: int = 1, p: float = 0.1, p_in: float = 0.2):
        super().__init__()
        self.drop_in = sn.Dropout(p_in)
        self.embed = sn.Linear(inputs, width)
        self.blocks = sn.Sequential(*(Block(width, hidden, p) for _ in range(blocks)))
        self.norm = sn.LayerNorm(width)
        self.head = sn.Linear(width, classes)

    def forward(self, x):
        h = sn.gelu(self.embed(self.drop_in(x)))
        return self.head(self.norm(self.blocks(h)))


def tiny() -> ResidualMLP:
    """The same network at widths 4 (3 classes), small enough to read its equations."""
    return ResidualMLP(inputs=4, width=4, hidden=4, classes=3)
