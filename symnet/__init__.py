"""symnet: neural networks as SymPy mathematics, derived, printed, verified and compiled.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.Sigmoid(), sn.Linear(8, 3))
    >>> d = sn.derive(model, sn.CrossEntropyLoss(reduction="sum"))
    >>> print(d.backward[0].lhs, "=", d.backward[1].rhs)
    dZ2 = dZ2*A1.T
"""

from symnet import optim
from symnet.backends import cuda
from symnet.nn.activations import (
    GELU,
    Activation,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from symnet.symbolic.backprop import derive
from symnet.symbolic.derivation import Derivation
from symnet.nn.losses import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Loss,
    MSELoss,
    NLLLoss,
)
from symnet.nn.module import Linear, Module, Parameter, Sequential, manual_seed
from symnet.io.serialization import load, save
from symnet.backends.cpu import TrainStep, compile

__version__ = "0.1.0"

__all__ = [
    "Activation", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "Derivation", "GELU",
    "LeakyReLU", "Linear", "LogSoftmax", "Loss", "MSELoss", "Module", "NLLLoss", "Parameter",
    "ReLU", "Sequential", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh", "derive",
    "manual_seed", "optim", "compile", "TrainStep", "save", "load", "cuda",
]
