"""Declare: modules, parameters, activations and losses, each a piece of SymPy mathematics.

Nothing here computes: `symnet.symbolic` turns a model into equations and a backend
(looked up by name in `symnet.nn.devices`) runs its kernels.

Example:
    >>> from symnet import nn
    >>> nn.Sequential(nn.Linear(2, 3), nn.Tanh()).layers()[1]
    Tanh()
"""

from symnet.nn import init
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
from symnet.nn.dropout import Dropout
from symnet.nn.functional import (
    elementwise,
    exp,
    gelu,
    leaky_relu,
    log,
    log_softmax,
    mean,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    sqrt,
    sum,  # noqa: A004 - torch.sum's name, as sn.sum
    tanh,
)
from symnet.nn.losses import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Loss,
    MSELoss,
    NLLLoss,
)
from symnet.nn.module import Identity, Linear, Module, Sequential, manual_seed
from symnet.nn.normalization import BatchNorm1d, LayerNorm, RMSNorm
from symnet.nn.parameter import Parameter
from symnet.nn.value import Value

__all__ = [
    "Activation", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "GELU", "LeakyReLU",
    "Linear", "LogSoftmax", "Loss", "MSELoss", "Module", "NLLLoss", "Parameter", "ReLU",
    "Sequential", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh", "manual_seed",
    "BatchNorm1d", "Dropout", "Identity", "init", "LayerNorm", "RMSNorm", "Value",
    "elementwise", "exp", "gelu",
    "leaky_relu", "log", "log_softmax",
    "mean", "relu", "sigmoid", "silu", "softmax", "softplus", "sqrt", "sum", "tanh",
]
