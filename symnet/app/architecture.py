"""Multilayer perceptrons described by plain data, as the CLI and checkpoints carry them.

Example:
    >>> spec = Architecture(layers=(4, 8, 3), activation="tanh", loss="cross-entropy")
    >>> spec.model()
    Sequential(
      (0): Linear(4, 8),
      (1): Tanh(),
      (2): Linear(8, 3)
    )
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from symnet.nn import activations, losses
from symnet.nn.module import Linear, Module, Sequential

ACTIVATIONS = {
    "relu": activations.ReLU, "sigmoid": activations.Sigmoid, "tanh": activations.Tanh,
    "leaky-relu": activations.LeakyReLU, "softplus": activations.Softplus,
    "silu": activations.SiLU, "gelu": activations.GELU,
}
#: loss name → (loss class, module the model ends with so the loss gets what it expects)
LOSSES = {
    "cross-entropy": (losses.CrossEntropyLoss, None),
    "nll": (losses.NLLLoss, activations.LogSoftmax),
    "mse": (losses.MSELoss, None),
    "bce": (losses.BCELoss, activations.Sigmoid),
    "bce-with-logits": (losses.BCEWithLogitsLoss, None),
}


@dataclass(frozen=True)
class Architecture:
    """Widths of an MLP, one hidden activation, the loss; validated on creation."""

    layers: tuple[int, ...]
    activation: str = "relu"
    loss: str = "cross-entropy"
    dtype: str = "float32"

    def __post_init__(self):
        layers = tuple(self.layers)
        if len(layers) < 2:
            raise ValueError(f"layers needs at least an input and an output width, got {layers}")
        for k, width in enumerate(layers):
            if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
                raise ValueError(f"layer width {k} must be a positive integer, got {width!r}")
        object.__setattr__(self, "layers", tuple(int(w) for w in layers))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; "
                             f"choose from {', '.join(ACTIVATIONS)}")
        _check_loss(self.loss)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    @property
    def inputs(self) -> int:
        return self.layers[0]

    @property
    def outputs(self) -> int:
        return self.layers[-1]

    def model(self) -> Module:
        """A freshly initialised `Sequential` with this shape."""
        modules: list[Module] = []
        widths = self.layers
        for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            modules.append(Linear(fan_in, fan_out, dtype=np.dtype(self.dtype).type))
            if k < len(widths) - 2:
                modules.append(ACTIVATIONS[self.activation]())
        final = LOSSES[self.loss][1]
        if final is not None:
            modules.append(final())
        return Sequential(*modules)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The names and shapes of `model`'s ``state_dict``, without allocating anything.

        A checkpoint's tensors are checked against these before a model is built for it.

        Example:
            >>> Architecture((4, 8, 3)).parameter_shapes()
            {'0.weight': (8, 4), '0.bias': (8,), '2.weight': (3, 8), '2.bias': (3,)}
        """
        shapes = {}
        for k, (fan_in, fan_out) in enumerate(zip(self.layers, self.layers[1:])):
            shapes[f"{2 * k}.weight"] = (fan_out, fan_in)  # Linear k sits after k activations
            shapes[f"{2 * k}.bias"] = (fan_out,)
        return shapes

    def loss_function(self, reduction: str = "mean") -> losses.Loss:
        return loss_function(self.loss, reduction)

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        known = {"layers", "activation", "loss", "dtype"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


def loss_function(name: str, reduction: str = "mean") -> losses.Loss:
    """The loss called ``name`` in `LOSSES` (a ``--model`` network ends as its file says).

    Example:
        >>> loss_function("mse", "sum")
        MSELoss(reduction='sum')
    """
    _check_loss(name)
    return LOSSES[name][0](reduction=reduction)


def _check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")


def parse_layers(text: str) -> tuple[int, ...]:
    """``"784,128,10"`` → ``(784, 128, 10)``, with a one-line error for anything else.

    Example:
        >>> parse_layers("4, 8,3")
        (4, 8, 3)
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--layers must be comma-separated positive integers like 784,128,10, "
                         f"got {text!r}")
    widths = tuple(int(p) for p in parts)
    if 0 in widths:
        raise ValueError(f"--layers: a layer width of 0 is not allowed (got {text!r})")
    return widths
