"""What a GPU call sends besides the batch, packed so that it costs one copy each way.

Dropout masks are drawn on the host (by symnet's generator, so a CPU step and a CUDA step
seeded alike draw the same masks) and BatchNorm's running statistics live on the host, where
``state_dict()``, ``model.to("cpu")`` and ``load_state_dict`` read and write them.  A call
writes both into one host array, uploads it in one copy, and after its kernels downloads the
prefix that holds the statistics they updated: one upload and at most one download per call,
however many layers, and the host's values are never stale (nor the device's, which are
uploaded again every call).

Example:
    >>> import numpy as np
    >>> from symnet.backends.cuda import is_available
    >>> if is_available():  # doctest: +SKIP
    ...     from numba import cuda
    ...     s = Staging(cuda, {"mean": (3,), "M1": (4, 3)}, np.float64, returned=("mean",))
    ...     s.host["M1"][...] = 1.0
    ...     s.send()  # one upload; kernels read s.device["M1"] and update s.device["mean"]
"""

from __future__ import annotations

import math

import numpy as np


class Staging:
    """Named arrays packed in one host array and one device array of the same layout.

    ``host[name]`` and ``device[name]`` are views of the two (shaped as the kernels take
    them); the ``returned`` names come first, so `receive` copies back one contiguous prefix.
    """

    def __init__(self, cuda, shapes: dict[str, tuple[int, ...]], dtype,
                 returned: tuple[str, ...] = ()):
        order = [*returned, *(n for n in shapes if n not in returned)]
        sizes = [math.prod(shapes[n]) for n in order]
        ends = np.cumsum([0, *sizes]).tolist()
        self._host = np.zeros(max(ends[-1], 1), dtype)  # never empty: a device array isn't
        self._device = cuda.device_array(self._host.shape, dtype)
        self.host = {n: self._host[a:b].reshape(shapes[n])
                     for n, a, b in zip(order, ends, ends[1:])}
        self.device = {n: self._device[a:b].reshape(shapes[n])
                       for n, a, b in zip(order, ends, ends[1:])}
        self.returned = tuple(returned)
        self._prefix = ends[len(returned)]

    def send(self) -> None:
        """Upload every array (one copy), when there is any."""
        if self.host:
            self._device.copy_to_device(self._host)

    def receive(self, into: dict[str, np.ndarray]) -> None:
        """Download the ``returned`` arrays (one copy) and write them into ``into``'s arrays
        in place (the arrays a model's buffers are)."""
        if not self.returned:
            return
        self._device[:self._prefix].copy_to_host(self._host[:self._prefix])
        for name in self.returned:
            into[name][...] = self.host[name]
