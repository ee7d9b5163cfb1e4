"""Derivations → compiled kernels: which equations go into which function, and buffers.

One compiled unit per (model, loss, optimizer, dtype, options): its programs are lowered
by `codegen`, rendered into one module, cached on disk by hash and imported.

Example:
    >>> import numpy as np, symnet as sn
    >>> unit = model_unit(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss(), np.float64)
    >>> sorted(unit.functions)
    ['forward', 'gradients']
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from codegen.blas import choice, gemm_choice
from codegen.cache import load_module
from codegen.cpu import MIN_WORK, render_module, threads_from
from codegen.ir import Program
from codegen.lower import lower
from symnet.nn.losses import Loss, MSELoss
from symnet.nn.module import Module, Parameter
from symnet.nn.trace import trace
from symnet.optim import Optimizer
from symnet.symbolic.backprop import backward, gradient_symbol
from symnet.symbolic.graph import Graph, N, build
from symnet.version import __version__

#: argument names the caller supplies per call
INPUT, LABELS, TARGET = "X", "labels", "Y"


@dataclass
class Unit:
    """A compiled unit: its programs, the imported functions and its source."""

    programs: dict[str, Program]
    functions: dict
    source: str
    dtype: type
    parallel: bool | str = False
    _buffers: dict = field(default_factory=dict)
    #: the cache options the source was loaded under (they name its file)
    options: dict = field(default_factory=dict)
    #: a train step's parameter symbols → state-dict keys ({"W1": "0.weight"})
    params: dict[str, str] = field(default_factory=dict)
    #: a train step's output width (rows of its target)
    outputs: int = 0
    #: a CUDA program's trailing 1-element accumulators (`codegen.cuda.accumulators`)
    accumulators: tuple[str, ...] = ()
    #: a model unit's graph (which symbol is which parameter, the output)
    graph: Graph | None = None
    #: the smallest batch from which a threaded kernel is worth it (`codegen.cpu.threads_from`)
    threads_from: int | None = None

    def buffers(self, name: str, batch: int, provided: dict[str, np.ndarray]) -> list:
        """Arguments of program ``name`` after the leading ones, allocated once per batch."""
        program = self.programs[name]
        key = (name, batch)
        if key not in self._buffers:
            self._buffers[key] = {
                n: np.empty(concrete_shape(program.buffers[n].shape, batch), self.dtype)
                for n in program.arguments if n not in provided and n in program.buffers}
        allocated = self._buffers[key]
        return [provided[n] if n in provided else allocated[n] for n in program.arguments]


def concrete_shape(shape: tuple, batch: int) -> tuple[int, ...]:
    return tuple(int(d.subs(N, batch)) if isinstance(d, sp.Expr) else int(d) for d in shape)


def structure_key(model: Module, loss: Loss | None, dtype) -> tuple:
    """What decides the equations: the traced forward equations, loss, dtype — and the
    parameters' state-dict keys, which the unit's graph maps its symbols to (a nested
    Sequential has the same layers as a flat one but keys '0.0.weight', not '0.weight'),
    with which uses share a parameter (each use's index points at the first use's).  The
    libraries the CPU products call (`codegen.blas`) decide the source too."""
    first: dict[int, int] = {}
    keys = tuple((name, first.setdefault(id(p), k)) for k, (name, p) in
                 enumerate(model.named_parameters(remove_duplicate=False)))
    loss_key = None if loss is None else (type(loss).__name__, loss.reduction, str(loss.expr))
    return (_forward_key(model), keys, loss_key, np.dtype(dtype).name,
            (choice(), gemm_choice()))


#: model → (its cheap signature, the srepr of its traced equations)
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLAIN = (int, float, str, bool, tuple, type(None))


def _forward_key(model: Module) -> tuple:
    """The model's forward equations (``srepr``, exact), traced again only when something
    that could change them did: a module, its mode, or a plain attribute ``forward`` may
    read (``self.alpha = 0.1``)."""
    signature = tuple(
        (prefix, id(m), type(m), m.training,
         tuple(sorted((k, v) for k, v in vars(m).items() if isinstance(v, _PLAIN))))
        for prefix, m in model.named_modules())
    signature += tuple((k, id(p), p.shape) for k, p in model.named_parameters())
    cached = _TRACED.get(model)
    if cached is None or cached[0] != signature:
        traced = trace(model)
        equations = tuple(sp.srepr(eq) for eq in traced.forward + traced.updates)
        cached = (signature, (equations, traced.output.name), traced)
        _TRACED[model] = cached
    return cached[1]


def mode_matters(model: Module) -> bool:
    """Whether ``model.train()`` and ``model.eval()`` give different equations (Dropout,
    BatchNorm, a forward that reads ``self.training``); traced once in the other mode, and
    every module's mode put back as it was."""
    modes = [(m, m.training) for m in model.modules()]
    here = _forward_key(model)
    try:
        model.train(not model.training)
        there = _forward_key(model)
    finally:
        for m, mode in modes:
            m.training = mode
    return here != there


def traced(model: Module):
    """The model's current `symnet.nn.trace.Trace` (masks, buffers, what counts batches)."""
    _forward_key(model)
    return _TRACED[model][2]


def target_arguments(loss: Loss) -> tuple[tuple[str, ...], dict[str, str]]:
    """Leading arguments and one-hot map: class indices arrive as labels."""
    if loss.target_kind == "index":
        return (INPUT, LABELS), {TARGET: LABELS}
    return (INPUT, TARGET), {}


def step_program(derivation, loss: Loss, check_finite: bool = False,
                 gemm_updates: bool = False, thin_products: int = 0,
                 column_totals: bool = False) -> Program:
    """A derivation's fused train step as one program: forward, loss, backward, updates.

    ``check_finite`` puts the finite check between the last gradient and the first update;
    ``gemm_updates`` lets SGD add its product straight into the weight, ``thin_products``
    sums a product of so few terms inside the loop that reads it, ``column_totals`` sums a
    bias gradient in the loop that writes its ``dZ`` (CPU renderer only).
    """
    d = derivation
    leading, one_hot = target_arguments(loss)
    eqs = d.forward + d.backward + d.updates
    guard_at = len(eqs) - len(d.updates) if check_finite else None
    return lower("train_step", eqs, N, leading, frozenset(d.state_symbols()), one_hot,
                 guard_at, gemm_updates=gemm_updates, thin_products=thin_products,
                 column_totals=column_totals)


def compile_unit(programs: list[Program], dtype, parallel: bool | str, title: str,
                 flush: bool = False) -> Unit:
    """``programs`` rendered into one module, compiled (or loaded from Numba's cache).

    ``parallel``: ``"auto"`` runs the loops whose work reaches `codegen.cpu.MIN_WORK` on
    Numba's threads, ``True`` every loop, ``False`` none (`codegen.cpu.render_module`).
    ``flush``: the programs flush denormals to zero while they run (`codegen.flush`).
    """
    source = render_module(programs, N, parallel is not False, header=title,
                           real=np.dtype(dtype).name,
                           min_work=MIN_WORK if parallel == "auto" else 0, flush=flush)
    options = {"dtype": np.dtype(dtype).name, "parallel": parallel,
               "symnet": __version__, **({"flush": True} if flush else {})}
    module = load_module(source, options)
    starts = [threads_from(p, N, MIN_WORK) for p in programs]
    return Unit({p.name: p for p in programs}, {p.name: getattr(module, p.name)
                                                 for p in programs}, source, dtype, parallel,
                options=options, threads_from=min((s for s in starts if s is not None),
                                                  default=None))


def update_signature(optimizer) -> tuple[str, ...]:
    """What decides an optimizer's update equations, without deriving a model: its type
    and its update for a generic parameter (hyperparameter values are runtime scalars)."""
    R, C = sp.symbols("R C", integer=True, positive=True)
    P = sp.MatrixSymbol("P", R, C)
    return (type(optimizer).__name__, *(str(eq) for eq in optimizer.update(P,
                                                                          gradient_symbol(P))))


#: compiled units of this process, by what decides their source (every backend's)
UNITS: dict[tuple, Unit] = {}


def step_state(model: Module, optimizer: Optimizer, params: dict[str, str], dtype,
               device: str) -> dict[str, tuple[np.ndarray, Parameter]]:
    """A train step's parameter and optimizer-state arguments, by program name.

    ``params`` maps program names to state-dict keys (``Graph.params``).  ``W1`` → (that
    parameter's values, the parameter); ``mW1`` → (its optimizer state ``m``, the parameter).
    The arrays are the host arrays as stored, never fetched from a GPU: the CPU step uses
    them, the CUDA step (`symnet.backends.cuda`) maps each to its device copy.  Shared by
    both steps, so they agree on names and refuse the same mistakes (dtype, device) alike.

    Example:
        >>> import numpy as np, symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 1))
        >>> opt = sn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        >>> sorted(step_state(m, opt, {"W1": "0.weight", "b1": "0.bias"}, np.float32, "cpu"))
        ['W1', 'b1', 'mW1', 'mb1']
    """
    by_key = dict(model.named_parameters())
    index = {id(p): k for k, p in enumerate(optimizer.params)}
    arrays = {}
    for name, key in params.items():
        parameter = by_key[key]
        if parameter.device != device:
            raise ValueError(f"parameter {key} is on {parameter.device!r}, but this step was "
                             f"compiled for {device!r}: move the model back with "
                             f"model.to({device!r}), or compile again (sn.compile uses the "
                             f"model's device)")
        if parameter.dtype != dtype:
            raise TypeError(f"parameter {key} is {parameter.dtype}; the step was "
                            f"compiled for {np.dtype(dtype).name}: compile again")
        arrays[name] = (parameter.kernel_array(), parameter)  # as stored: no GPU copy
        # dict.items: the stored arrays, also of a `symnet.backends.cuda.DeviceState` (no fetch)
        state = optimizer.state[index[id(parameter)]]
        checked = optimizer.state_arrays(parameter, dict(dict.items(state)))
        for prefix, array in zip(optimizer.state_prefixes, checked):
            arrays[prefix + name] = (array, parameter)
    return arrays


def forward_program(model: Module, loss: Loss | None = None) -> tuple[Graph, Program]:
    """The graph and its lowered ``forward(X, …)`` program, for any backend to render.

    Without a loss the graph is built with MSE, which leaves the model's equations as they are.
    """
    graph = build(model, loss if loss is not None else MSELoss())
    forward_eqs = graph.model_equations() + graph.updates  # running statistics follow
    names = frozenset(eq.lhs.name for eq in forward_eqs)
    return graph, lower("forward", forward_eqs, N, (INPUT,), names)


def model_unit(model: Module, loss: Loss | None, dtype, parallel: bool = False) -> Unit:
    """``forward(X, …)`` and, with a loss, ``gradients(X, target, …) -> L``."""
    key = ("model", structure_key(model, loss, dtype), parallel)
    if key not in UNITS:
        graph, forward = forward_program(model, loss)
        programs = [forward]
        if loss is not None:
            leading, one_hot = target_arguments(loss)
            grads = frozenset(gradient_symbol(graph.symbol(p)).name for p in graph.params)
            programs.append(lower("gradients", graph.forward + backward(graph), N, leading,
                                  grads | {graph.output}, one_hot))
        UNITS[key] = compile_unit(programs, dtype, parallel, f"symnet kernels for {model!r}")
        UNITS[key].graph = graph
    return UNITS[key]


def shard_unit(model: Module, loss: Loss, dtype, parallel: bool | str = False) -> Unit:
    """``shard_gradients(X, target, …) -> L``: a data-parallel rank's kernel.  The gradients
    of its shard, then the running statistics' updates from the shard's own batch statistics,
    written in place into the arrays passed for the buffers (`symnet.backends.mpi` passes
    copies and keeps rank 0's only once the reduced gradients pass the finite check).

    Example:
        >>> import numpy as np, symnet as sn
        >>> m = sn.Sequential(sn.Linear(3, 4), sn.BatchNorm1d(4))
        >>> args = shard_unit(m, sn.MSELoss(), np.float64).programs["shard_gradients"].arguments
        >>> [a for a in args if a.startswith("running")]
        ['running_mean1', 'running_var1']
    """
    key = ("shard", structure_key(model, loss, dtype), parallel)
    if key not in UNITS:
        graph = build(model, loss)
        leading, one_hot = target_arguments(loss)
        grads = frozenset(gradient_symbol(graph.symbol(p)).name for p in graph.params)
        program = lower("shard_gradients", graph.forward + backward(graph) + graph.updates, N,
                        leading, grads | {graph.output} | set(graph.buffers), one_hot)
        UNITS[key] = compile_unit([program], dtype, parallel,
                                  f"symnet data-parallel kernels for {model!r}")
        UNITS[key].graph = graph
    return UNITS[key]


def optimizer_unit(optimizer, dtype) -> Unit:
    """``update_matrix`` and ``update_vector``: one parameter's update, any size."""
    config = tuple(sorted((k, bool(v) if k != "lr" else 0) for k, v in
                          optimizer.defaults.items() if not isinstance(v, tuple)))
    key = ("optimizer", type(optimizer).__name__, config, np.dtype(dtype).name)
    if key not in UNITS:
        R, C = sp.symbols("R C", integer=True, positive=True)
        programs = []
        for name, shape in (("update_matrix", (R, C)), ("update_vector", (R, 1))):
            P = sp.MatrixSymbol("P", *shape)
            eqs = optimizer.update(P, gradient_symbol(P))
            keep = frozenset({"P", *(pre + "P" for pre in optimizer.state_prefixes)})
            leading = ("P", "dP", *(pre + "P" for pre in optimizer.state_prefixes))
            programs.append(lower(name, eqs, N, leading, keep))
        UNITS[key] = compile_unit(programs, dtype, False, f"symnet {optimizer!r} updates")
    return UNITS[key]
