"""The statements of one fused entry-wise loop, in order: shared by the CPU and CUDA
renderers, which differ only in how they print the loop around them.

A `Loop`'s assignments become registers (``t_Z1``); loop invariants (``1 − β₁ᵗ``) and
common subexpressions are factored out (`hoisted`); a subexpression that reads an array,
a register or another such subexpression varies per entry and is computed inside the loop,
just before the first statement that needs it; the rest is computed once, before the loop.

Example:
    >>> import sympy as sp
    >>> from codegen.ir import I, Loop
    >>> Z, b, beta = sp.IndexedBase("Z"), sp.IndexedBase("b"), sp.Symbol("beta")
    >>> op = Loop((sp.Symbol("n"),), (("A", (1 - beta) * (Z[I] + b[I])),), formulas=("A = …",))
    >>> plan = plan_loop(op)
    >>> plan.invariants, [(s.name, str(e), t) for s, e, t in plan.statements]
    ([(k0, 1 - beta)], [('t_A', 'k0*(Z[i] + b[i])', 'A')])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from codegen.ir import Loop
from codegen.printer import stable


def hoisted(exprs: list[sp.Expr]) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
    """Loop invariants (no array, no loop value: ``1 − β₁ᵗ``) and common subexpressions."""
    invariants: dict[sp.Expr, sp.Symbol] = {}

    def varies(e: sp.Expr) -> bool:
        return e.has(sp.Indexed) or any(s.name.startswith("t_") for s in e.free_symbols)

    def hoist(e: sp.Expr) -> sp.Expr:
        # Only scalar expressions: a Piecewise branch or condition is not a value.
        if isinstance(e, sp.Expr) and not varies(e) and not e.is_Atom and not e.is_Number \
                and not (e.is_Mul and all(a.is_Atom for a in e.args)):
            return invariants.setdefault(e, sp.Symbol(f"k{len(invariants)}"))
        if e.is_Atom or not e.args:
            return e
        return e.func(*(hoist(a) for a in e.args))

    exprs = [hoist(stable(e)) for e in exprs]  # σ stays whole through the CSE below
    symbols = sp.numbered_symbols("c")
    replacements, reduced = sp.cse(exprs, symbols=symbols, optimizations="basic")
    return [(s, e) for e, s in invariants.items()] + replacements, reduced


@dataclass(frozen=True)
class LoopPlan:
    """``invariants`` run once before the loop; ``statements`` run per entry, in order:
    ``(symbol, value, array)``, where ``array`` (or None for a local) receives the value."""

    invariants: list[tuple[sp.Symbol, sp.Expr]]
    statements: list[tuple[sp.Symbol, sp.Expr, str | None]]

    @property
    def defined(self) -> set[sp.Symbol]:
        """Every name a statement defines (registers and per-entry subexpressions)."""
        return {s for s, _, _ in self.statements}


def plan_loop(op: Loop, per_entry: Callable[[sp.Expr], bool] | None = None) -> LoopPlan:
    """Order ``op``'s work; ``per_entry(e)`` keeps an invariant inside the loop anyway (CUDA:
    one that calls a device-only helper cannot run on the host)."""
    local_of: dict[sp.Indexed, sp.Symbol] = {}
    exprs = []
    for target, expr in op.assigns:
        exprs.append(expr.xreplace(local_of))
        local_of[sp.IndexedBase(target)[op.index]] = sp.Symbol(f"t_{target}")
    replacements, reduced = hoisted(exprs)
    registers = {sp.Symbol(f"t_{target}") for target, _ in op.assigns}
    outside, inside, varying = [], [], set()
    for s, e in replacements:
        if e.has(sp.Indexed) or e.free_symbols & (registers | varying) or \
                (per_entry is not None and per_entry(e)):
            inside.append((s, e))
            varying.add(s)
        else:
            outside.append((s, e))
    statements: list[tuple[sp.Symbol, sp.Expr, str | None]] = []
    defined: set[sp.Symbol] = set()
    for (target, _), value in zip(op.assigns, reduced):
        for s, e in [(s, e) for s, e in inside if s not in defined]:
            if e.free_symbols & (registers | varying) <= defined:
                statements.append((s, e, None))
                defined.add(s)
        register = sp.Symbol(f"t_{target}")
        statements.append((register, value, None if target in op.locals else target))
        defined.add(register)
    return LoopPlan(outside, statements)
