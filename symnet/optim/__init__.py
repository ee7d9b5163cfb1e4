"""Optimizers: update rules declared as equations, run by compiled kernels.

Example:
    >>> import symnet as sn
    >>> model = sn.Sequential(sn.Linear(4, 3))
    >>> opt = sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> opt.defaults["momentum"]
    0.9
"""

from symnet.optim.optimizer import SGD, Adam, AdamW, Optimizer

#: the optimizers by the names the command line uses, each with the learning rate a run
#: gets when it names none (SGD has no default of its own, as in torch.optim)
BY_NAME: dict[str, tuple[type[Optimizer], float]] = {
    "sgd": (SGD, 0.05), "adam": (Adam, 1e-3), "adamw": (AdamW, 1e-3)}


def make(name: str, params, lr: float | None = None) -> Optimizer:
    """The optimizer called ``name`` over ``params``; ``lr`` defaults to `BY_NAME`'s.

    Example:
        >>> import symnet as sn
        >>> make("sgd", sn.Linear(2, 1).parameters()).defaults["lr"]
        0.05
    """
    if name not in BY_NAME:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(BY_NAME)}")
    cls, default = BY_NAME[name]
    return cls(params, lr=default if lr is None else lr)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "BY_NAME", "make"]
