"""symnet: neural networks as SymPy mathematics, derived, printed, verified and compiled.

The package follows the pipeline, one stage per subpackage, each importing only the stages
below it (`import-linter` checks this in CI): `nn` (declare) → `symbolic` (graph, derive,
print, verify) → `optim` (updates as equations) → `backends` (compile and run: cpu, cuda,
mpi) → `io` (checkpoint files) → `app` (``symnet train``) → `cli`.  This module only
gathers the public names.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.Sigmoid(), sn.Linear(8, 3))
    >>> d = sn.derive(model, sn.CrossEntropyLoss(reduction="sum"))
    >>> print(d.backward[0].lhs, "=", d.backward[1].rhs)
    dZ2 = dZ2*A1.T
"""

from symnet import optim
from symnet.app.checkpoint import load_model
from symnet.backends import compile, cuda
from symnet.backends.cpu import TrainStep
from symnet.backends.denormals import set_flush_denormal
from symnet.backends.threads import get_num_threads, set_num_threads
from symnet.io import load, save
from symnet.nn import (
    GELU,
    Activation,
    BatchNorm1d,
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Dropout,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    Loss,
    Module,
    MSELoss,
    NLLLoss,
    Parameter,
    ReLU,
    RMSNorm,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
    Value,
    elementwise,
    exp,
    gelu,
    init,
    leaky_relu,
    log,
    log_softmax,
    manual_seed,
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
from symnet.symbolic import Derivation, derive
from symnet.version import __version__

__all__ = [
    "Activation", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "Derivation", "GELU",
    "LeakyReLU", "Linear", "LogSoftmax", "Loss", "MSELoss", "Module", "NLLLoss", "Parameter",
    "ReLU", "Sequential", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh", "TrainStep",
    "__version__", "compile", "cuda", "derive", "get_num_threads", "load", "load_model",
    "manual_seed", "optim", "save", "set_flush_denormal", "set_num_threads",
    "BatchNorm1d", "Dropout", "Identity", "init", "LayerNorm", "RMSNorm", "Value",
    "elementwise", "exp", "gelu",
    "leaky_relu", "log", "log_softmax",
    "mean", "relu", "sigmoid", "silu", "softmax", "softplus", "sqrt", "sum", "tanh",
]
