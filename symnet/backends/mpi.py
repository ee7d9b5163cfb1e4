"""Data-parallel training on MPI: every rank runs the compiled gradient kernel on its shard
of the global batch, one ``Allreduce`` sums all gradients and the loss, and every rank then
applies the same compiled optimizer update, so the parameters stay identical everywhere.
Dropout and BatchNorm work as under PyTorch's DDP without SyncBatchNorm: each rank draws its
own shard's masks and normalises with its own shard's statistics, and rank 0's running
statistics are kept on every rank (`DistributedStep`).

Run under ``mpiexec -n 2 python -m mpi4py script.py`` (``pip install 'symnet[mpi]'``).
Outside ``mpiexec`` the world has one rank and a step is an ordinary training step (then
mpi4py is not even needed; only dropout masks come from the step's own `mask_generator`).

Example:
    >>> import numpy as np, symnet as sn
    >>> from symnet.backends.mpi import DistributedStep, broadcast_parameters, size
    >>> sn.manual_seed(0)
    >>> model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3))
    >>> broadcast_parameters(model)
    >>> step = DistributedStep(model, sn.CrossEntropyLoss(),
    ...                        sn.optim.SGD(model.parameters(), lr=0.1))
    >>> X, y = np.random.default_rng(0).random((16, 4), np.float32), np.arange(16) % 3
    >>> first = step(X, y)
    >>> [step(X, y) for _ in range(20)][-1] < first, size()
    (True, 1)
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from symnet.backends import kernels, layer_state
from symnet.backends.step import Step
from symnet.backends.threads import check_parallel
from symnet.nn.losses import Loss
from symnet.nn.module import Module, generator
from symnet.optim import Optimizer


def mpi():
    """The ``mpi4py.MPI`` module, or an ImportError saying how to install it."""
    try:  # the optional mpi extra: only a distributed run needs it
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'symnet[mpi]'") from error
    return MPI


#: set by mpiexec (MPICH/Hydra, Open MPI, PMIx): then a missing mpi4py is an error
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class SingleProcess:
    """The world of a process started without mpiexec when mpi4py is not installed."""

    rank, size = 0, 1

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Bcast(self, buffer, root: int = 0) -> None:
        pass

    def Abort(self, errorcode: int = 1) -> None:
        raise SystemExit(errorcode)


def world(comm=None):
    """``comm``, or ``MPI.COMM_WORLD`` when it is None (`SingleProcess` without mpi4py,
    outside mpiexec)."""
    if comm is not None:
        return comm
    try:
        return mpi().COMM_WORLD
    except ImportError:
        if any(name in os.environ for name in LAUNCHER_VARIABLES):
            raise
        return SingleProcess()


def rank(comm=None) -> int:
    """This process's rank (0 outside ``mpiexec``)."""
    return world(comm).Get_rank()


def size(comm=None) -> int:
    """The number of ranks (1 outside ``mpiexec``)."""
    return world(comm).Get_size()


def is_root(comm=None) -> bool:
    """True on rank 0: the rank that prints and writes files."""
    return rank(comm) == 0


def shard(batch: int, ranks: int, index: int) -> slice:
    """Rank ``index``'s contiguous rows of a batch: the first ``batch % ranks`` get one more.

    Example:
        >>> [shard(5, 2, r) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
        >>> shard(1, 2, 1)  # more ranks than samples: an empty shard
        slice(1, 1, None)
    """
    base, extra = divmod(batch, ranks)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def broadcast_parameters(model: Module, comm=None, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers (BatchNorm's running statistics and
    ``num_batches_tracked``) into every rank's model, in place, with one ``Bcast`` per dtype:
    the model state PyTorch's ``DistributedDataParallel`` syncs when it is built.

    Example:
        >>> import symnet as sn
        >>> broadcast_parameters(sn.Sequential(sn.Linear(2, 2)))  # one rank: nothing changes
    """
    arrays = [p.data for p in model.parameters()] + model.buffers()
    for dtype in dict.fromkeys(a.dtype for a in arrays):  # the same order on every rank
        group = [a for a in arrays if a.dtype == dtype]
        flat = np.concatenate([a.ravel() for a in group])
        world(comm).Bcast(flat, root=root)
        offset = 0
        for a in group:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size


def mask_generator(comm=None) -> np.random.Generator:
    """This rank's generator of dropout masks: child ``rank`` of ``SeedSequence(seed)``
    (numpy's recipe for independent parallel streams), ``seed`` being one integer drawn from
    rank 0's symnet generator (`symnet.manual_seed`).  Every rank draws that integer, so
    ranks seeded alike stay alike, and uses rank 0's, so the masks of a run depend on rank
    0's seed and the number of ranks only, as the broadcast initial parameters do.

    Example:
        >>> import symnet as sn
        >>> sn.manual_seed(0); first = mask_generator().random()
        >>> sn.manual_seed(0); bool(first == mask_generator().random())
        True
    """
    comm = world(comm)
    seed = np.array([generator().integers(2**63)], np.int64)
    comm.Bcast(seed, root=0)
    return np.random.default_rng(np.random.SeedSequence(int(seed[0]),
                                                        spawn_key=(comm.Get_rank(),)))


class DistributedStep(Step):
    """``step(X, y) -> float``: one data-parallel training step on the *global* batch.

    Every rank passes the same ``X, y``; rank r computes gradients on its contiguous shard
    (`shard`) with the compiled ``gradients`` kernel, writing them straight into one flat
    buffer that also holds the loss and the shard's size.  With ``reduction='mean'`` each
    part is weighted by its shard size, so after one ``Allreduce`` and a division by the
    global batch size the buffer holds exactly the one-process gradient and mean loss; a
    rank with an empty shard contributes zeros.  The compiled optimizer kernels then update
    every parameter.  Returns the global loss.

    Models with Dropout and BatchNorm1d train as under PyTorch's ``DistributedDataParallel``
    without ``SyncBatchNorm``.  Each rank draws its own shard's dropout masks from
    ``generator`` (`mask_generator`: independent streams per rank, reproducible from rank
    0's `symnet.manual_seed`; each Dropout keeps its rank's mask as ``last_mask``).
    BatchNorm normalises each shard with that shard's statistics, and the kernel updates
    copies of the running statistics from them; once the reduced gradients pass the finite
    check, rank 0's copies are broadcast and kept on every rank, and every rank counts
    ``num_batches_tracked`` once.  So after each step every rank holds the running
    statistics rank 0 computed from its shard: rank 0's buffers are DDP's exactly (default
    ``broadcast_buffers=True``, ``forward_sync_buffers`` since torch 2.13); DDP's other ranks
    receive the same ones at the start of the next forward and until then hold their own
    shard's update, which only an evaluation or a checkpoint between steps could see.
    BatchNorm needs more than one sample on every rank (a smaller global batch raises
    ValueError).

    An exception on any rank prints ``rank r: <error>`` to stderr and calls ``Abort(1)``
    (with more than one rank), so the job stops instead of hanging in the ``Allreduce``.
    ``check_finite=True`` skips the update when a reduced gradient or the loss is NaN/Inf
    and raises FloatingPointError on every rank alike (no abort: they all agree).
    ``timed=True`` records each step's seconds and its ``Allreduce`` seconds in
    ``timings``.  ``parallel`` is serial by default (``False``): ranks usually take a core
    each; ``"auto"`` or ``True`` compile the gradient kernel as `sn.compile` does
    (`symnet.backends.threads`), for a rank that owns several cores.
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, comm=None,
                 parallel: bool | str = False, *, check_finite: bool = True,
                 timed: bool = False):
        moved = [(key, p.device) for key, p in model.named_parameters() if p.device != "cpu"]
        if moved:
            raise ValueError(f"DistributedStep runs on the CPU; parameter {moved[0][0]} is on "
                             f"{moved[0][1]!r}: call model.to('cpu') first")
        check_parallel(parallel)
        super().__init__(model, loss, optimizer, check_finite=check_finite)
        self.comm = world(comm)
        self.unit = kernels.shard_unit(model, loss, self.dtype, parallel)
        self.updates = kernels.optimizer_unit(optimizer, self.dtype)
        self.program = self.unit.programs["shard_gradients"]
        #: this rank's generator of dropout masks (`mask_generator`)
        self.generator = mask_generator(self.comm)
        self.outputs = int(self.unit.graph.target.shape[0])
        by_id = {id(p): name for name, key in self.unit.graph.params.items()
                 for k, p in model.named_parameters() if k == key}
        self._names = [by_id[id(p)] for p in optimizer.params]
        sizes = [p.data.size for p in optimizer.params]
        # [all gradients in parameter order | loss | samples]: one Allreduce per step.
        self.buffer = np.zeros(sum(sizes) + 2, self.dtype)
        offsets = np.cumsum([0, *sizes])
        self.gradients = [self.buffer[a:b].reshape(p.shape)
                          for a, b, p in zip(offsets[:-1], offsets[1:], optimizer.params)]
        # The running statistics the kernel reads and updates: copies in one flat array, so
        # a refused step leaves the model's alone and one Bcast hands out rank 0's.
        running = layer_state.buffer_arrays(model, kernels.traced(model))
        self.statistics = np.zeros(sum(a.size for a in running.values()), self.dtype)
        offsets = np.cumsum([0, *(a.size for a in running.values())])
        self._running = {name: self.statistics[a:b].reshape(array.shape) for a, b, (name, array)
                         in zip(offsets[:-1], offsets[1:], running.items())}
        self._arguments: dict[int, tuple] = {}
        self._count = 0  # this rank's shard of the last batch
        self.timings: dict[str, list[float]] | None = (
            {"step": [], "allreduce": []} if timed else None)

    def __call__(self, inputs, targets) -> float:
        try:
            value, finite = self._step(inputs, targets)
        except Exception as error:
            if self.comm.Get_size() == 1:
                raise
            print(f"rank {self.comm.Get_rank()}: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)
            self.comm.Abort(1)
            raise  # Abort does not return; this keeps a mocked comm honest
        # every rank reduced the same buffer, so every rank counts the step or raises alike
        return self._finish(value, finite, None if finite else self._prediction_range())

    def _prediction_range(self) -> np.ndarray | None:
        """Ŷ's smallest and largest entry over every rank's shard, for a refused step's
        message (which every rank words alike); None if the loss needs no range."""
        arguments = self.program.arguments[2:]
        if self.loss.prediction_range is None or "Yhat" not in arguments:
            return None
        bounds = np.array([np.inf, np.inf])  # (min, −max): one MIN reduction for both
        if self._count:
            shard = self._arguments[self._count][2]["Yhat"]
            bounds[:] = np.nanmin(shard), -np.nanmax(shard)
        if self.comm.Get_size() > 1:
            self.comm.Allreduce(mpi().IN_PLACE, bounds, op=mpi().MIN)
        return np.array([bounds[0], -bounds[1]])

    def _step(self, inputs, targets) -> tuple[float, bool]:
        start = time.perf_counter()
        X, Y = self._batch(inputs, targets, self.outputs)
        batch = X.shape[0]
        self._check_shards(batch)
        rows = shard(batch, self.comm.Get_size(), self.comm.Get_rank())
        count = self._count = rows.stop - rows.start
        self.buffer[:] = 0
        for name, array in layer_state.buffer_arrays(self.model, self._trace).items():
            self._running[name][...] = array
        if count:
            arguments, named = self._buffers(count)
            layer_state.draw_masks(self._trace, count, self.dtype, into=named, rng=self.generator)
            value = self.unit.functions["shard_gradients"](X[rows], Y[rows], *arguments)
            self.buffer[-2] = value
            if self.loss.reduction == "mean":
                self.buffer[:-1] *= count
        self.buffer[-1] = count
        reducing = time.perf_counter()
        if self.comm.Get_size() > 1:  # over one rank the sum is the buffer itself
            self.comm.Allreduce(mpi().IN_PLACE, self.buffer, op=mpi().SUM)
        reduced = time.perf_counter()
        total = int(round(float(self.buffer[-1])))
        if total != batch:
            raise ValueError(f"the ranks passed different global batches: this rank has "
                             f"{batch} samples, all ranks' shards add up to {total}; every "
                             "rank must pass the same X and y")
        if self.loss.reduction == "mean":
            self.buffer[:-1] /= batch
        # One sum settles it unless it overflows; then the full check.
        finite = not self.check_finite or np.isfinite(self.buffer.sum()) or \
            bool(np.isfinite(self.buffer).all())
        if finite:
            self._update()
            self._keep_statistics(batch)
        if self.timings is not None:
            self.timings["allreduce"].append(reduced - reducing)
            self.timings["step"].append(time.perf_counter() - start)
        return float(self.buffer[-2]), finite

    def _check_shards(self, batch: int) -> None:
        """PyTorch's rule for batch statistics, on every rank's shard (each its own); without
        them a rank may even have no samples."""
        ranks, needed = self.comm.Get_size(), self._trace.min_batch
        if ranks == 1:
            layer_state.check_batch(self._trace, batch)
        elif needed > 1 and batch // ranks < needed:
            raise ValueError(f"{type(self.model).__name__}: BatchNorm in training mode "
                             "normalises each rank's shard with its own statistics and needs "
                             f"more than 1 sample on every rank; a global batch of {batch} "
                             f"over {ranks} ranks leaves {batch // ranks} on rank {ranks - 1}")

    def _buffers(self, count: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """The shard kernel's arguments after (X, target), and by name: parameters, views of
        the flat buffer for their gradients, the running statistics' copies, and masks and
        intermediates allocated once per shard size."""
        identity = [(id(p._host), p._host.shape) for p in self.optimizer.params]
        cached = self._arguments.get(count)
        if cached is None or cached[0] != identity:
            fixed = dict(self._running)
            for name, p, grad in zip(self._names, self.optimizer.params, self.gradients):
                fixed[name], fixed["d" + name] = p.kernel_array(), grad
            named = {n: fixed[n] if n in fixed else
                     np.empty(kernels.concrete_shape(self.program.buffers[n].shape, count),
                              self.dtype)
                     for n in self.program.arguments[2:]}
            cached = self._arguments[count] = (identity, list(named.values()), named)
        return cached[1], cached[2]

    def _keep_statistics(self, batch: int) -> None:
        """Rank 0's updated running statistics into every rank's model; count the batch."""
        if self._running:
            if self.comm.Get_size() > 1:
                self.comm.Bcast(self.statistics, root=0)
            for name, array in layer_state.buffer_arrays(self.model, self._trace).items():
                array[...] = self._running[name]
        layer_state.after_training_call(self._trace)

    def _update(self) -> None:
        optimizer = self.optimizer
        for p, state, grad in zip(optimizer.params, optimizer.state, self.gradients):
            name = "update_vector" if len(p.shape) == 1 else "update_matrix"
            # Scalars in the model's dtype, as the fused step passes them.
            self.updates.functions[name](p.kernel_array(), grad,
                                         *optimizer.state_arrays(p, state),
                                         *self._scalars(self.updates.programs[name].scalars))


def training_step(model: Module, loss: Loss, optimizer: Optimizer, device: str = "cpu",
                  comm=None) -> DistributedStep:
    """What ``symnet train --distributed`` runs: rank 0's parameters broadcast to every
    rank, then a `DistributedStep` that refuses NaN/Inf updates.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 2))
        >>> training_step(m, sn.MSELoss(), sn.optim.SGD(m.parameters(), lr=0.1)).check_finite
        True
    """
    if device != "cpu":
        raise ValueError(f"--distributed runs on the CPU, not --device {device}")
    broadcast_parameters(model, comm)
    return DistributedStep(model, loss, optimizer, comm, check_finite=True)
