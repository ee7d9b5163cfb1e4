"""Initial values for a layer's own parameters, drawn from symnet's seeded generator.

Example:
    >>> import symnet as sn
    >>> sn.manual_seed(0)
    >>> w = sn.init.uniform((3, 2), bound=0.5)
    >>> w.shape, w.dtype.name, bool(abs(w).max() <= 0.5)
    ((3, 2), 'float32', True)
"""

from __future__ import annotations

import numpy as np

from symnet.nn.module import generator
from symnet.nn.parameter import check_dtype


def uniform(shape: tuple, bound: float, dtype=np.float32) -> np.ndarray:
    """Entries uniform in ``[−bound, bound]`` (PyTorch's Linear uses ``1/√fan_in``)."""
    return generator().uniform(-bound, bound, shape).astype(check_dtype(dtype))


def normal(shape: tuple, std: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Entries normal with mean 0 and standard deviation ``std``."""
    return generator().normal(0.0, std, shape).astype(check_dtype(dtype))


def zeros(shape: tuple, dtype=np.float32) -> np.ndarray:
    """All zeros."""
    return np.zeros(shape, check_dtype(dtype))


def ones(shape: tuple, dtype=np.float32) -> np.ndarray:
    """All ones."""
    return np.ones(shape, check_dtype(dtype))
