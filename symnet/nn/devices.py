"""Devices by name: the one table where a backend is looked up (as tinygrad's ``Device[…]``).

The declaration layer knows only this table and two small interfaces: a `Backend` runs a
model's kernels (``model(X)``, the eager loss and update, a compiled step), and a `Storage`
holds a parameter's values on a device.  Each backend registers itself when
`symnet.backends` is imported (``import symnet`` does), so nothing here imports a backend,
and a new backend is one module that calls `register`.

Example:
    >>> import symnet as sn
    >>> from symnet.nn.devices import backend, check_device
    >>> check_device("cuda:0"), backend("cpu").name
    ('cuda', 'cpu')
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

#: the devices a name may denote (each is registered by its backend)
DEVICES = ("cpu", "cuda")


class Storage(Protocol):
    """A parameter's values kept on a device beside the host array (the CUDA `Mirror`).

    The host array is never replaced, so references to it stay valid; ``write=True`` says
    the caller may change what it got, so the other copy is stale from then on.
    """

    name: str  #: the device the copy is on

    def host(self, write: bool) -> np.ndarray:
        """The host array, current (copied back first if the device's values are newer)."""

    def assign(self, values: np.ndarray) -> None:
        """Overwrite both copies with ``values`` (already of the right shape and dtype)."""

    def replaced(self, host: np.ndarray) -> Storage:
        """A storage of a new host array, taking this one's place (this one is dropped)."""

    def release(self) -> np.ndarray:
        """Bring the values home, free the device copy, and return the host array."""


class Backend(Protocol):
    """What a device's backend does for the declaration layer."""

    name: str

    def require(self) -> None:
        """Return if this backend can run here; else raise the one clear error saying why."""

    def storage(self, host: np.ndarray) -> Storage | None:
        """A device copy of ``host`` (None: the host array is the storage, as on the CPU)."""

    def forward(self, model, inputs) -> np.ndarray:
        """``model(inputs)`` on this device, as a host array."""

    def loss(self, loss, output, target):
        """``loss(output, target)``: a value whose ``backward()`` fills ``p.grad``."""

    def update(self, optimizer) -> None:
        """``optimizer.step()`` from each parameter's ``.grad``."""

    def compile(self, model, loss, optimizer, *, parallel: bool | str, check_finite: bool,
                denormals: str = "auto"):
        """The fused train step of ``model`` (on this device) under ``loss``, ``optimizer``."""


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Make ``backend`` the one for its device name (``backend.name``); returns it."""
    if backend.name not in DEVICES:
        raise ValueError(f"unknown device {backend.name!r}; devices are {', '.join(DEVICES)}")
    BACKENDS[backend.name] = backend
    return backend


def backend(device) -> Backend:
    """The backend registered for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:0"``…)."""
    name = check_device(device)
    if name not in BACKENDS:
        raise RuntimeError(f"no backend is registered for {name!r}: import symnet first")
    return BACKENDS[name]


def _device_text(value) -> str | None:
    """A device's name: a string, or the text of a ``torch.device``; None for anything else."""
    if isinstance(value, str):
        return value
    return str(value) if type(value).__name__ == "device" and hasattr(value, "type") else None


def is_device(value) -> bool:
    """Whether ``value`` names a device (``"cpu"``, ``"cuda:0"``…) rather than a dtype."""
    text = _device_text(value)
    return text is not None and text.split(":")[0] in DEVICES


def check_device(device) -> str:
    """``"cpu"`` or ``"cuda"`` for ``device`` (``"cuda:0"`` is ``"cuda"``), or a clear ValueError.

    Example:
        >>> check_device("cuda:0"), check_device("cpu")
        ('cuda', 'cpu')
    """
    text = _device_text(device)
    if text in DEVICES or text == "cuda:0":
        return text.split(":")[0]
    if is_device(device):
        raise ValueError(f"device {device!r}: symnet uses one GPU, Numba's current device: "
                         f"write 'cuda' (or 'cuda:0'; pick the GPU with CUDA_VISIBLE_DEVICES)")
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
