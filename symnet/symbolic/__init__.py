"""Graph, derive, print, verify: a model and its loss as equations, and their backward pass.

`graph` builds the forward equations, `rules` holds each operation's vector-Jacobian
product, `backprop` sweeps them into named backward equations (`fuse` composes where SymPy
finds it simpler), `derivation` keeps them, `printing` and `diagram` show them, `verify`
proves them.

Example:
    >>> import symnet as sn
    >>> from symnet.symbolic import derive
    >>> [str(eq.lhs) for eq in derive(sn.Sequential(sn.Linear(2, 2)), sn.MSELoss()).backward]
    ['dYhat', 'dW1', 'db1']
"""

from symnet.symbolic.backprop import derive
from symnet.symbolic.derivation import Derivation

__all__ = ["Derivation", "derive"]
