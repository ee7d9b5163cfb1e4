"""What ``symnet kernels`` prints: the generated source of a fused train step, per device.

Each kernel is commented with the formula it computes (``# dW1 = dZ1*X.T``).  The CPU
source is the one `sn.compile` imports and runs; the CUDA source is rendered from the same
lowered program by `codegen.cuda` exactly as `symnet.backends.cuda.CudaTrainStep` renders it, but
without Numba's CUDA target, so it prints on a machine with no GPU.

Example:
    >>> from symnet.app.architecture import Architecture
    >>> src = kernel_source(Architecture((4, 3, 2), "tanh", "mse"), "sgd", "cpu")
    >>> "# dW1 = dZ1*X.T" in src, "# dZ1 = dA1*(1 - A1**2)" in src
    (True, True)
"""

from __future__ import annotations

import symnet as sn
from codegen import cuda as cuda_render
from symnet.app.architecture import Architecture
from symnet.backends import kernels
from symnet.symbolic.graph import N


def _cpu(model, loss, optimizer) -> str:
    return sn.compile(model, loss, optimizer).source()


def _cuda(model, loss, optimizer) -> str:
    # The same derivation, lowering and header as symnet.backends.cuda.CudaTrainStep, minus the
    # import of the rendered module (which needs numba.cuda and a GPU or the simulator).
    program = kernels.step_program(sn.derive(model, loss, optimizer), loss, check_finite=True)
    return cuda_render.render_module(
        [program], N, model.dtype, cuda_render.TILE,
        header=f"symnet CUDA train step: {model!r}, {loss!r}, {optimizer!r}")


DEVICES = {"cpu": _cpu, "cuda": _cuda}


def kernel_source(arch: Architecture, optimizer: str = "adam", device: str = "cpu",
                  reduction: str = "mean") -> str:
    """The generated source of ``arch``'s fused train step (forward, loss, backward, update).

    ``device`` is ``"cpu"`` (Numba ``@njit``) or ``"cuda"`` (``@cuda.jit`` kernels and
    their host driver); the dtype is ``arch.dtype``.

    Example:
        >>> from symnet.app.architecture import Architecture
        >>> src = kernel_source(Architecture((4, 3, 2)), "adam", "cuda")
        >>> "@cuda.jit(cache=True)" in src, "# dZ2 = (-Y + Yhat)/N" in src
        (True, True)
    """
    return step_source(arch.model(), arch.loss_function(reduction), optimizer, device)


def step_source(model: sn.Module, loss: sn.Loss, optimizer: str = "adam",
                device: str = "cpu") -> str:
    """`kernel_source` for any ``model`` (``symnet kernels --model``), in its own dtype.

    Example:
        >>> import symnet as sn
        >>> model = sn.Sequential(sn.Linear(4, 3), sn.Tanh(), sn.Linear(3, 2))
        >>> "# dZ1 = dA1*(1 - A1**2)" in step_source(model, sn.MSELoss(), "sgd")
        True
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    # The learning rate is passed to the compiled step per call; any value gives this source.
    opt = sn.optim.make(optimizer, model.parameters(), lr=1e-3)
    return DEVICES[device](model, loss, opt)
