"""Optimizers: update rules declared as equations, run by compiled kernels.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 3))
    >>> opt = sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> opt.defaults["momentum"]
    0.9
"""

from symnet.optim.optimizer import SGD, Adam, AdamW, Optimizer

#: the optimizers by the names the command line uses
BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "BY_NAME"]
