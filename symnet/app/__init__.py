"""The training application behind ``symnet train``: architectures by name, networks from
a user's file (``--model``), data sets, the training loop, run checkpoints (resume), plots,
and the kernel listing of ``symnet kernels``.

Example:
    >>> from symnet.app.architecture import Architecture
    >>> Architecture((4, 3, 2)).model().layers()[0]
    Linear(4, 3)
"""
