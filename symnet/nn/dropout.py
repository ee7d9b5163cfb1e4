"""Dropout: a seeded mask in training, the identity in evaluation (PyTorch's semantics).

In training mode the layer is ``y = x ⊙ M / (1 − p)`` with ``M`` a fresh 0/1 mask for every
call (each entry kept with probability ``1 − p``), drawn from symnet's generator
(`symnet.manual_seed`); the mask is an input of the equations, so the backward is
``dx = dy ⊙ M / (1 − p)``.  In eval mode there is no equation at all.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(3, 4), sn.Dropout(0.25))
    >>> [str(eq.rhs) for eq in sn.derive(model, sn.MSELoss()).forward[1:2]]
    ['4*M1*Z1/3']
"""

from __future__ import annotations

import numbers

import numpy as np
import sympy as sp

from symnet.nn.module import Module
from symnet.nn.value import Value, elementwise


class Dropout(Module):
    """Zeroes each entry with probability ``p`` in training and scales the rest by
    ``1/(1 − p)``; the identity in eval mode.  ``last_mask`` holds the mask of the last
    training call (batch-major, ``(N, features)``).

    Example:
        >>> import symnet as sn
        >>> sn.Dropout(0.1)
        Dropout(p=0.1, inplace=False)
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1), got {p!r} (p = 1 "
                             "would drop everything)")
        self.p = float(p)
        self.inplace = bool(inplace)
        self.last_mask: np.ndarray | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"

    def __repr__(self) -> str:
        return f"Dropout({self.extra_repr()})"

    def forward(self, x: Value) -> Value:
        if not self.training or self.p == 0:
            return x
        mask = Value(x.trace.mask(self, self.p, x._plain().shape), x.trace)
        keep = sp.nsimplify(1 - self.p, rational=True)  # prints 4·x ⊙ M/3, not 1.33…
        return elementwise(lambda a, m: a * m / keep, x, mask, name="D")
