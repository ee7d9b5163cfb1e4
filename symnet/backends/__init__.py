"""Run: the backends that compile and run a model's kernels, one module each.

Importing this package registers every backend in the device table (`symnet.nn.devices`):
`cpu` (``@njit`` kernels; also the eager ``loss.backward()`` and ``opt.step()``) and `cuda`
(``@cuda.jit`` kernels, parameters kept on the GPU).  `mpi` runs the CPU kernels data-parallel
over MPI ranks.  `step` holds what every train step shares and ``sn.compile``; `kernels`
lowers derivations into compiled units, `step_index` finds them again on disk, `checks`
guards every kernel's inputs, `threads` says how many threads a CPU step runs on, `staging`
packs what a GPU call sends besides the batch (dropout masks, running statistics).

Example:
    >>> from symnet.nn.devices import BACKENDS
    >>> sorted(BACKENDS)
    ['cpu', 'cuda']
"""

from symnet.backends import cpu, cuda
from symnet.backends.step import compile

__all__ = ["compile", "cpu", "cuda"]
