"""What a call of a model's equations needs besides its kernels: the dropout masks drawn,
the buffers (running statistics) handed over, the batches counted, PyTorch's batch rule.

Each takes the `symnet.nn.trace.Trace` of the equations (`symnet.backends.kernels.traced`),
looked up once per call: a compiled step keeps the one it was compiled from.

Example:
    >>> import symnet as sn
    >>> from symnet.backends.kernels import traced
    >>> model = sn.Sequential(sn.Linear(3, 4), sn.Dropout(0.5))
    >>> sorted(draw_masks(traced(model), 2, float))
    ['M1']
"""

from __future__ import annotations

import numpy as np

from symnet.nn.module import Module
from symnet.nn.module import generator as module_rng
from symnet.nn.trace import Trace


def buffer_arrays(model: Module, t: Trace) -> dict[str, np.ndarray]:
    """The arrays of the buffers ``t`` (the model's `traced` equations) read or update, by
    symbol name (as stored: the kernels update running statistics in place)."""
    if not t.buffers:
        return {}
    by_key = dict(model.named_buffers())
    return {name: by_key[key] for name, key in t.buffers.items()}


def after_training_call(t: Trace) -> None:
    """What a training call of ``t``'s equations does besides its kernels: count batches
    (BatchNorm's ``num_batches_tracked``)."""
    for module in t.counted:
        module._buffers["num_batches_tracked"] += 1


def check_batch(t: Trace, batch: int) -> None:
    """PyTorch's rule: batch statistics need more than one sample."""
    if batch < t.min_batch:
        raise ValueError(f"BatchNorm in training mode needs more than 1 sample per batch, got "
                         f"{batch} (as PyTorch: use model.eval() to run one sample on the "
                         "running statistics)")


def draw_masks(t: Trace, batch: int, dtype, into: dict | None = None,
               rng: np.random.Generator | None = None) -> dict:
    """A fresh dropout mask for every `Dropout` the model's forward uses in training, by
    argument name, from ``rng`` (by default symnet's generator, `symnet.manual_seed`);
    written into the arrays of ``into`` when given (a compiled step's buffers).  Each layer
    keeps a copy of its mask as ``last_mask``."""
    rng = module_rng() if rng is None else rng
    masks = {}
    for mask in t.masks:
        drawn = mask.draw(rng, batch, dtype)
        if into is not None:
            into[mask.name][...] = drawn
            drawn = into[mask.name]
        masks[mask.name] = drawn
        mask.module.last_mask = drawn.copy()
    return masks
