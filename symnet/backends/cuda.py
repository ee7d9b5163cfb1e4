"""The GPU backend: parameters live on the device, and steps and forwards run there.

``model.to("cuda")`` gives every parameter a device copy (a `Mirror`).  ``sn.compile`` on
such a model returns a `CudaTrainStep`: the same derivation and IR as the CPU's
`symnet.backends.cpu.TrainStep`, rendered by `codegen.cuda` as ``@cuda.jit`` kernels, which update
the parameters' device copies in place — each step sends the batch and brings back the loss,
nothing else (a model with Dropout or BatchNorm1d also sends its masks and running statistics
and brings the statistics back: `symnet.backends.staging`).  ``model(X)`` on a cuda model runs
the forward kernels on the device (`forward`).

Who owns what: a parameter owns its device copy; the optimizer state a CUDA step keeps on
the device is owned by the optimizer (its per-parameter state dicts become `DeviceState`)
and registered with the parameter, so ``model.to("cpu")`` brings both home.  A step holds
no device copies of its own, only per-batch temporaries: it borrows the parameters' and
the optimizer's at every call, so nothing is uploaded twice, and a step keeps working after
its model went to the CPU and back.  BatchNorm's running statistics stay host arrays: a
call uploads them with the dropout masks and downloads them after its kernels updated them
(packed: one copy each way).  Host reads are always current: ``p.data``,
``model.state_dict()``, ``optimizer.state_dict()`` and ``optimizer.state[i][prefix]`` copy
the values back when the device's are newer (once; later reads are free until the next
step), and host writes reach the device before its next use.

Without a GPU, Numba's simulator runs the same kernels (slowly): set
``NUMBA_ENABLE_CUDASIM=1`` before Numba is imported.

Example:
    >>> import numpy as np, symnet as sn
    >>> from symnet.backends.cuda import is_available
    >>> model = sn.Sequential(sn.Linear(4, 3), sn.Tanh(), sn.Linear(3, 2))
    >>> if is_available():  # doctest: +SKIP
    ...     model.to("cuda")
    ...     opt = sn.optim.SGD(model.parameters(), lr=0.1)
    ...     step = sn.compile(model, sn.CrossEntropyLoss(), opt)  # a CudaTrainStep
    ...     loss = step(np.ones((8, 4), np.float32), np.arange(8) % 2)
    ...     checkpoint = model.state_dict()  # host numpy arrays, trained values
    ...     model.to("cpu")  # the host parameters now hold the trained values
"""

from __future__ import annotations

import weakref

import numpy as np
from numba import config

from codegen import cuda as render
from codegen.cache import load_module
from codegen.ir import Program
from symnet.backends import eager, kernels, layer_state
from symnet.backends.checks import check_inputs
from symnet.backends.staging import Staging
from symnet.backends.step import Step
from symnet.nn.devices import register
from symnet.nn.losses import Loss
from symnet.nn.module import Module
from symnet.nn.parameter import Parameter
from symnet.nn.trace import Trace
from symnet.optim import Optimizer
from symnet.symbolic.graph import N
from symnet.version import __version__

INSTALL = "pip install 'numba-cuda[cu12]'  (or [cu13] for CUDA 13)"


def _unavailable() -> str | None:
    """Why CUDA can't run here, in the user's words, or None when it can."""
    try:  # the optional numba-cuda: imported when the GPU is first asked for, not before
        from numba import config, cuda
    except ImportError as error:
        return (f"symnet's CUDA backend needs Numba's CUDA support (numba-cuda), which is "
                f"not installed ({error}): {INSTALL}")
    if config.ENABLE_CUDASIM:
        return None
    try:
        if cuda.is_available():
            return None
        cuda.current_context()  # raises with the driver's own reason
    except Exception as error:  # noqa: BLE001 - any driver error means: no usable GPU
        reason = " ".join(str(error).split())
        return f"numba-cuda is installed but no CUDA GPU was found ({reason})"
    return "numba-cuda is installed but no CUDA GPU was found"


def is_available() -> bool:
    """True when Numba finds a CUDA GPU or its CUDA simulator is enabled.

    Example:
        >>> isinstance(is_available(), bool)
        True
    """
    return _unavailable() is None


def require():
    """``numba.cuda``, or the one clear RuntimeError: numba-cuda missing, or no GPU."""
    reason = _unavailable()
    if reason is not None:
        raise RuntimeError(f"{reason}. To run the CUDA kernels without a GPU, set "
                           f"NUMBA_ENABLE_CUDASIM=1 before importing numba.")
    from numba import cuda  # importable: _unavailable just imported it

    return cuda


def default_tile() -> int:
    """The matmul tile edge: 16 (256 threads per block); 4 under the simulator, which runs
    one Python thread per CUDA thread."""
    return 4 if config.ENABLE_CUDASIM else render.TILE


class Mirror:
    """A host array and its copy on the GPU, kept coherent lazily by two flags.

    ``host(write)`` returns the host array, first copying the device's values back when they
    are newer; ``device(write)`` returns the device array, first uploading the host's when
    they are newer.  ``write=True`` says the caller may change what it got, so the other copy
    is stale from then on.  The host array is never replaced, so references to it stay valid.

    A parameter's mirror also knows (weakly) the mirrors of the optimizer state kept beside
    it (``companions``): `release` brings them home too.

    Example:
        >>> import numpy as np
        >>> if is_available():  # doctest: +SKIP
        ...     m = Mirror(np.zeros(3))
        ...     gpu = m.device(write=True)  # a kernel may change the device copy now
        ...     host = m.host(write=False)  # copied back once; later reads are free
    """

    name = "cuda"  # the device it keeps the copy on

    def __init__(self, host: np.ndarray):
        self.cuda = require()
        self.array = host
        self.copy = self.cuda.to_device(np.ascontiguousarray(host))
        self.host_current = self.device_current = True
        self.companions: weakref.WeakSet[Mirror] = weakref.WeakSet()

    def host(self, write: bool) -> np.ndarray:
        """The host array, current (copied back if the device's values are newer)."""
        if self.copy is not None and not self.host_current:
            if self.array.flags.c_contiguous:
                self.copy.copy_to_host(self.array)
            else:
                self.array[...] = self.copy.copy_to_host()
            self.host_current = True
        if write:
            self.device_current = False
        return self.array

    def device(self, write: bool):
        """The device array, current (uploaded again if the host's values are newer)."""
        if self.copy is None:
            raise RuntimeError("this array was moved back to the CPU: move it to the GPU again")
        if not self.device_current:
            self.copy.copy_to_device(np.ascontiguousarray(self.array))
            self.device_current = True
        if write:
            self.host_current = False
        return self.copy

    def assign(self, values: np.ndarray) -> None:
        """Overwrite both copies with ``values`` (already of the right shape and dtype)."""
        self.array[...] = values
        self.push()

    def push(self) -> None:
        """Upload the host array now, whatever the flags say."""
        self.device(write=False).copy_to_device(np.ascontiguousarray(self.array))
        self.host_current = self.device_current = True

    def replaced(self, host: np.ndarray) -> Mirror:
        """A mirror of a new host array, taking over the companions; this one is dropped."""
        new = Mirror(host)
        new.companions = self.companions
        self.copy = None
        return new

    def release(self) -> np.ndarray:
        """Bring the values (and the companions') home and free the device copies."""
        for companion in list(self.companions):
            companion.release()
        self.companions = weakref.WeakSet()
        array = self.host(write=False)
        self.copy = None
        return array

    def __repr__(self) -> str:
        where = "released" if self.copy is None else \
            "both current" if self.host_current and self.device_current else \
            "device newer" if self.device_current else "host newer"
        return f"Mirror(shape={self.array.shape}, dtype={self.array.dtype}, {where})"


class DeviceState(dict):
    """One parameter's optimizer state while a CUDA step may keep it on the GPU.

    A dict of host arrays, as before, whose reads are current: ``state["m"]``, ``.items()``,
    ``.values()`` and ``.get`` copy the device's values back first when they are newer (and
    the reader may write into the array: the device copy is refreshed before the next step).
    It owns those device copies; `CudaTrainStep` turns ``optimizer.state[i]`` into one.
    """

    def __init__(self, parameter: Parameter, state: dict):
        super().__init__(state)
        self._parameter = parameter
        self._mirrors: dict[int, Mirror] = {}

    def mirror(self, array: np.ndarray) -> Mirror:
        """The device copy of one of this dict's arrays, made (and uploaded) on first use."""
        found = self._mirrors.get(id(array))
        if found is None or found.array is not array or found.copy is None:
            stored = dict.values(self)  # forget the copies of arrays replaced since
            self._mirrors = {id(a): m for a in stored
                             if (m := self._mirrors.get(id(a))) is not None and m.array is a}
            found = self._mirrors[id(array)] = Mirror(array)
            self._parameter._storage.companions.add(found)
        return found

    def _fetch(self, array: np.ndarray) -> np.ndarray:
        found = self._mirrors.get(id(array))
        if found is not None and found.array is array and found.copy is not None:
            found.host(write=True)
        return array

    def __getitem__(self, key: str) -> np.ndarray:
        return self._fetch(dict.__getitem__(self, key))

    def __iter__(self):  # overriding it sends dict(state) and {**state} through __getitem__
        return dict.__iter__(self)

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def values(self) -> list[np.ndarray]:
        return [self[key] for key in self]

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [(key, self[key]) for key in self]

    def copy(self) -> dict[str, np.ndarray]:
        return dict(self.items())

    def __reduce__(self):  # pickle, copy.deepcopy: a plain dict of the current values
        return dict, (self.copy(),)


def _temporaries(program: Program, accumulators: tuple[str, ...], leading: int, batch: int,
                 provided, dtype) -> dict:
    """Device arrays for ``program``'s intermediates at this batch size, and its accumulators:
    every argument but the ``leading`` per-call ones and those ``provided``."""
    cuda = require()
    skip = set(program.arguments[:leading]) | set(provided)
    temps = {n: cuda.device_array(kernels.concrete_shape(program.buffers[n].shape, batch), dtype)
             for n in program.arguments if n not in skip and n in program.buffers}
    temps.update({n: cuda.device_array(1, np.float64) for n in accumulators})
    return temps


def _staging(program: Program, t: Trace, batch: int, dtype) -> Staging:
    """Room for what a call of ``program`` (``t``'s equations) sends besides the batch: the
    dropout masks, drawn on the host, and the running statistics, which it sends back once
    updated."""
    names = [m.name for m in t.masks] + list(t.buffers)
    shapes = {n: kernels.concrete_shape(program.buffers[n].shape, batch)
              for n in names if n in program.arguments}
    updated = tuple(dict.fromkeys(eq.lhs.name for eq in t.updates if eq.lhs.name in shapes))
    return Staging(require(), shapes, dtype, returned=updated)


def _stage(staging: Staging, model: Module, t: Trace, batch: int,
           dtype) -> tuple[dict, dict]:
    """Draw this call's masks into ``staging`` (as the CPU does: same generator, same order),
    copy the running statistics beside them and upload both; the masks and the statistics'
    host arrays, by name."""
    if not staging.host:  # nothing to send: no dropout, no running statistics
        return {}, {}
    masks = layer_state.draw_masks(t, batch, dtype, into=staging.host)
    buffers = layer_state.buffer_arrays(model, t)
    for name, array in buffers.items():
        if name in staging.host:
            staging.host[name][...] = array
    staging.send()
    return masks, buffers


def _compile(program: Program, dtype, tile: int, header: str) -> kernels.Unit:
    """Render ``program`` as CUDA kernels and their host driver, and import it."""
    source = render.render_module([program], N, dtype, tile, header=header)
    options = {"dtype": np.dtype(dtype).name, "device": "cuda", "tile": tile,
               "symnet": __version__}
    module = load_module(source, options)
    return kernels.Unit({program.name: program}, {program.name: getattr(module, program.name)},
                        source, dtype, options=options,
                        accumulators=render.accumulators(program))


def _on_device(model: Module, what: str) -> None:
    where = model.device
    if where != "cuda":
        raise ValueError(f"{what}: the model is on {where!r}; move it with model.to('cuda') "
                         "first (or use the CPU backend)")


def forward(model: Module, inputs, tile: int | None = None) -> np.ndarray:
    """``model(X)`` for a cuda model: the forward kernels on the GPU, the output as numpy.

    The batch goes in and the output comes back; the parameters' device copies are only
    read.  In training mode Dropout draws its masks on the host and BatchNorm1d's running
    statistics come back updated (`Staging`), as on the CPU.  The output is remembered for the
    loss, as on the CPU, so the eager ``loss_fn(model(X), y).backward()`` still works (its
    gradient kernels run on the host, with the same masks).

    Example:
        >>> import numpy as np, symnet as sn
        >>> model = sn.Sequential(sn.Linear(3, 2))
        >>> if is_available():  # doctest: +SKIP
        ...     out = model.to("cuda")(np.ones((4, 3), np.float32))  # calls this
    """
    _on_device(model, "model(X)")
    cuda = require()
    dtype = model.dtype
    X = check_inputs(model, inputs, dtype)
    tile = default_tile() if tile is None else tile
    key = ("cuda-forward", kernels.structure_key(model, None, dtype), tile)
    if key not in kernels.UNITS:
        graph, program = kernels.forward_program(model)
        unit = kernels.UNITS[key] = _compile(program, dtype, tile,
                                             f"symnet CUDA forward: {model!r}")
        unit.graph = graph
    unit = kernels.UNITS[key]
    program = unit.programs["forward"]
    by_key = dict(model.named_parameters())
    arrays = {name: by_key[k]._storage.device(write=False) for name, k in
              unit.graph.params.items()}
    batch = X.shape[0]
    t = kernels.traced(model)  # once: each look walks the model
    layer_state.check_batch(t, batch)
    if batch not in unit._buffers:  # the last batch size's temporaries only
        staging = _staging(program, t, batch, dtype)
        unit._buffers = {batch: (_temporaries(program, unit.accumulators, 1, batch,
                                              {**arrays, **staging.device}, dtype), staging)}
    temporaries, staging = unit._buffers[batch]
    arrays.update(temporaries)
    arrays.update(staging.device)
    masks, buffers = _stage(staging, model, t, batch, dtype)
    arrays[kernels.INPUT] = cuda.to_device(X)
    unit.functions["forward"](*(arrays[n] for n in program.arguments),
                              *(arrays[n] for n in unit.accumulators))
    output = arrays[unit.graph.output].copy_to_host()
    staging.receive(buffers)
    layer_state.after_training_call(t)
    # copies: the staging arrays are this unit's, and the next call draws into them
    eager.remember(output, model, X, {n: m.copy() for n, m in masks.items()})
    return output


class CudaTrainStep(Step):
    """``step(X, y) -> float`` on the GPU, for a model moved there with ``model.to("cuda")``.

    ``sn.compile(model, loss, optimizer)`` returns one for a cuda model.  The parameters are
    the device copies the model's parameters own; the optimizer's state dicts become
    `DeviceState`, which own theirs.  A call sends the batch and brings back the loss; host
    reads of parameters or optimizer state copy them back on demand, ``model.to("cpu")``
    brings everything home, and ``sync()`` does so now without leaving the GPU.

    Dropout and BatchNorm1d: each call draws the masks on the host, exactly as the CPU step
    does (a CPU and a CUDA step seeded alike draw the same masks), and sends them with the
    running statistics in one upload; the kernels update the statistics on the device, and
    one download brings them back into the model's buffers, so ``state_dict()`` is current
    after every call (``num_batches_tracked`` counts on the host).  Cost per step: one upload
    of N × features per Dropout and 2 × features per BatchNorm1d, one download of the latter;
    a model without either sends nothing more.

    ``tile`` is the matmul tile edge (`default_tile`: 16, or 4 under the simulator).
    ``check_finite`` (the default) checks the loss and every gradient on the device before
    the updates (one extra 1-element copy back per step): when one is NaN/Inf no update
    kernel runs, and the step raises ``FloatingPointError`` with parameters, optimizer state
    and ``step_count`` unchanged, as `symnet.backends.cpu.TrainStep` does.  A step compiled
    before, in this process or (through the step index) an earlier one, is loaded without
    any SymPy work, as on the CPU.
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer,
                 tile: int | None = None, *, check_finite: bool = True):
        self.cuda = require()
        _on_device(model, "CudaTrainStep")
        super().__init__(model, loss, optimizer, check_finite=check_finite)
        tile = default_tile() if tile is None else tile
        key = ("cuda-step", kernels.structure_key(model, loss, self.dtype), tile,
               kernels.update_signature(optimizer), self.check_finite)
        self.unit = self._unit(key, lambda: self._compile(tile))
        self.program = self.unit.programs["train_step"]
        self.function = self.unit.functions["train_step"]
        self._batch_buffers: tuple[int, dict, Staging] | None = None
        self._inputs: dict = {}  # the batch's device arrays, reused while the shape holds
        self._resident()  # uploads the optimizer state now, and checks dtypes and devices

    def _compile(self, tile: int) -> kernels.Unit:
        d = self.derivation
        program = kernels.step_program(d, self.loss, self.check_finite)
        unit = _compile(program, self.dtype, tile, f"symnet CUDA train step: {self.model!r}, "
                                                   f"{self.loss!r}, {self.optimizer!r}")
        unit.params, unit.outputs = dict(d.graph.params), int(d.graph.target.shape[0])
        return unit

    def source(self) -> str:
        """The generated CUDA source: kernels commented with their formulas, then the driver."""
        return self.unit.source

    def _mirrors(self) -> dict[str, Mirror]:
        """Each parameter and optimizer-state argument's device copy, by program name."""
        for i, (parameter, state) in enumerate(zip(self.optimizer.params, self.optimizer.state)):
            if not isinstance(state, DeviceState):
                self.optimizer.state[i] = DeviceState(parameter, state)
        arrays = kernels.step_state(self.model, self.optimizer, self.unit.params, self.dtype,
                                    "cuda")
        index = {id(p): k for k, p in enumerate(self.optimizer.params)}
        return {name: parameter._storage if array is parameter._host else
                self.optimizer.state[index[id(parameter)]].mirror(array)
                for name, (array, parameter) in arrays.items()}

    def _resident(self) -> dict:
        """The device arrays a step updates (uploaded again only where the host is newer)."""
        return {name: m.device(write=True) for name, m in self._mirrors().items()}

    def upload(self) -> None:
        """Copy the host values of parameters and optimizer state to the GPU now.

        Rarely needed: writes through ``p.data`` or ``optimizer.state`` are uploaded before
        the next step anyway; this also covers an array held from before the last step.
        """
        for mirror in self._mirrors().values():
            mirror.push()

    def sync(self) -> None:
        """Copy parameters and optimizer state back into their host arrays, in place, now.

        The device copies stay current, so training goes on without uploading anything.
        """
        for mirror in self._mirrors().values():
            mirror.host(write=False)

    def _buffers(self, batch: int, resident) -> tuple[dict, Staging]:
        """Temporaries on the device and the staging of masks and running statistics,
        allocated once per batch size."""
        if self._batch_buffers is None or self._batch_buffers[0] != batch:
            staging = _staging(self.program, self._trace, batch, self.dtype)
            temporaries = _temporaries(self.program, self.unit.accumulators, 2, batch,
                                       {**resident, **staging.device}, self.dtype)
            self._batch_buffers = (batch, temporaries, staging)
        return self._batch_buffers[1:]

    def _upload(self, name: str, host: np.ndarray):
        """``host`` copied into this step's device array for ``name``, allocated once per
        shape and dtype: a new device array every step costs an allocation, and freeing the
        old ones synchronises the device."""
        device = self._inputs.get(name)
        if device is None or device.shape != host.shape or device.dtype != host.dtype:
            device = self._inputs[name] = self.cuda.device_array(host.shape, host.dtype)
        device.copy_to_device(host)
        return device

    def __call__(self, inputs, targets) -> float:
        X, Y = self._batch(inputs, targets, self.unit.outputs)
        batch = X.shape[0]
        layer_state.check_batch(self._trace, batch)
        resident = self._resident()
        temporaries, staging = self._buffers(batch, resident)
        arrays = {**temporaries, **staging.device, **resident}
        for name, host in zip(self.program.arguments[:2], (X, Y)):
            arrays[name] = self._upload(name, host)
        _, buffers = _stage(staging, self.model, self._trace, batch, self.dtype)
        value = self.function(*(arrays[n] for n in self.program.arguments),
                              *self._scalars(self.program.scalars),
                              *(arrays[n] for n in self.unit.accumulators))
        # No update kernel ran on a refused step: the device copies are as they were, and the
        # running statistics come back as they were sent.
        staging.receive(buffers)
        value, finite = value if self.check_finite else (value, True)
        if finite:
            layer_state.after_training_call(self._trace)
        wanted = not finite and self.loss.prediction_range is not None and "Yhat" in arrays
        return self._finish(value, finite, arrays["Yhat"].copy_to_host() if wanted else None)

    def __repr__(self) -> str:
        guard = "" if self.check_finite else ", check_finite=False"
        return f"CudaTrainStep({self.model!r}, {self.loss!r}, {self.optimizer!r}{guard})"


class CudaBackend:
    """The GPU's entry in the device table: `Mirror` storage, ``@cuda.jit`` kernels."""

    name = "cuda"

    def require(self) -> None:
        require()

    def storage(self, host: np.ndarray) -> Mirror:
        return Mirror(host)

    def forward(self, model: Module, inputs) -> np.ndarray:
        return forward(model, inputs)

    def loss(self, loss: Loss, output, target) -> eager.LossValue:
        return eager.loss_value(loss, output, target)  # host kernels on fetched values

    def update(self, optimizer: Optimizer) -> None:
        eager.optimizer_step(optimizer)

    def compile(self, model: Module, loss: Loss, optimizer: Optimizer, *,
                parallel: bool | str, check_finite: bool,
                denormals: str = "auto") -> CudaTrainStep:
        if parallel is True:  # "auto" (the default) and False say nothing about a GPU
            raise ValueError("compile: parallel=True runs the CPU kernels on several threads; "
                             "it does not apply to a model on 'cuda'")
        if denormals == "flush":  # "auto" and "ieee": the GPU's IEEE arithmetic
            raise ValueError("compile: denormals='flush' sets the CPU's FTZ and DAZ flags; a "
                             "GPU computes denormals at full speed: use 'auto' or 'ieee' on "
                             "'cuda'")
        return CudaTrainStep(model, loss, optimizer, check_finite=check_finite)


register(CudaBackend())
