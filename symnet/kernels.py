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

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

import symnet
from codegen.cache import load_module
from codegen.cpu import render_module
from codegen.ir import Program
from codegen.lower import lower
from symnet.backprop import backward, gradient_symbol
from symnet.graph import N, build
from symnet.losses import Loss, MSELoss
from symnet.module import Module

#: argument names the caller supplies per call
INPUT, LABELS, TARGET = "X", "labels", "Y"


@dataclass
class Unit:
    """A compiled unit: its programs, the imported functions and its source."""

    programs: dict[str, Program]
    functions: dict
    source: str
    dtype: type
    parallel: bool = False
    _buffers: dict = field(default_factory=dict)

    def buffers(self, name: str, batch: int, provided: dict[str, np.ndarray]) -> list:
        """Arguments of program ``name`` after the leading ones, allocated once per batch."""
        program = self.programs[name]
        key = (name, batch)
        if key not in self._buffers:
            self._buffers[key] = {
                n: np.empty(_shape(program.buffers[n].shape, batch), self.dtype)
                for n in program.arguments if n not in provided and n in program.buffers}
        allocated = self._buffers[key]
        return [provided[n] if n in provided else allocated[n] for n in program.arguments]


def _shape(shape: tuple, batch: int) -> tuple[int, ...]:
    return tuple(int(d.subs(N, batch)) if isinstance(d, sp.Expr) else int(d) for d in shape)


def structure_key(model: Module, loss: Loss | None, dtype) -> tuple:
    """What decides the equations: layers (with their formulas), loss, dtype — and the
    parameters' state-dict keys, which the unit's graph maps its symbols to (a nested
    Sequential has the same layers as a flat one but keys '0.0.weight', not '0.weight')."""
    layers = tuple((type(m).__name__, repr(m), str(getattr(m, "expr", ""))) for m in
                   model.layers())
    keys = tuple(name for name, _ in model.named_parameters())
    loss_key = None if loss is None else (type(loss).__name__, loss.reduction, str(loss.expr))
    return layers, keys, loss_key, np.dtype(dtype).name


def target_arguments(loss: Loss) -> tuple[tuple[str, ...], dict[str, str]]:
    """Leading arguments and one-hot map: class indices arrive as labels."""
    if loss.target_kind == "index":
        return (INPUT, LABELS), {TARGET: LABELS}
    return (INPUT, TARGET), {}


def compile_unit(programs: list[Program], dtype, parallel: bool, title: str) -> Unit:
    source = render_module(programs, N, parallel, header=title)
    options = {"dtype": np.dtype(dtype).name, "parallel": parallel,
               "symnet": symnet.__version__}
    module = load_module(source, options)
    return Unit({p.name: p for p in programs}, {p.name: getattr(module, p.name)
                                                 for p in programs}, source, dtype, parallel)


_units: dict[tuple, Unit] = {}


def model_unit(model: Module, loss: Loss | None, dtype, parallel: bool = False) -> Unit:
    """``forward(X, …)`` and, with a loss, ``gradients(X, target, …) -> L``."""
    key = ("model", structure_key(model, loss, dtype), parallel)
    if key not in _units:
        graph = build(model, loss if loss is not None else MSELoss())
        forward_eqs = graph.model_equations()
        names = frozenset(eq.lhs.name for eq in forward_eqs)
        programs = [lower("forward", forward_eqs, N, (INPUT,), names)]
        if loss is not None:
            leading, one_hot = target_arguments(loss)
            grads = frozenset(gradient_symbol(graph.symbol(p)).name for p in graph.params)
            programs.append(lower("gradients", graph.forward + backward(graph), N, leading,
                                  grads | {graph.output}, one_hot))
        _units[key] = compile_unit(programs, dtype, parallel, f"symnet kernels for {model!r}")
        _units[key].graph = graph
    return _units[key]


def optimizer_unit(optimizer, dtype) -> Unit:
    """``update_matrix`` and ``update_vector``: one parameter's update, any size."""
    config = tuple(sorted((k, bool(v) if k != "lr" else 0) for k, v in
                          optimizer.defaults.items() if not isinstance(v, tuple)))
    key = ("optimizer", type(optimizer).__name__, config, np.dtype(dtype).name)
    if key not in _units:
        R, C = sp.symbols("R C", integer=True, positive=True)
        programs = []
        for name, shape in (("update_matrix", (R, C)), ("update_vector", (R, 1))):
            P = sp.MatrixSymbol("P", *shape)
            eqs = optimizer.update(P, gradient_symbol(P))
            keep = frozenset({"P", *(pre + "P" for pre in optimizer.state_prefixes)})
            leading = ("P", "dP", *(pre + "P" for pre in optimizer.state_prefixes))
            programs.append(lower(name, eqs, N, leading, keep))
        _units[key] = compile_unit(programs, dtype, False, f"symnet {optimizer!r} updates")
    return _units[key]
