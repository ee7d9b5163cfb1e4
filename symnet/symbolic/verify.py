"""Proof that the derived backward equations are the derivatives of the loss.

The derivation is instantiated at small sizes and every equation is expanded to scalars,
one symbol per entry (`symnet.symbolic.scalars`): the forward values, the true gradients
dL/dV by the chain rule with ``sympy.diff`` equation by equation (independent of the
derivation's rules), and the derived gradients ``dV``.  Each entry of each ``dV`` is
compared with the matching true gradient: first at a random point of the leaves (a wrong
rule fails fast), then symbolically: definitions are substituted, latest first, until the
difference simplifies to zero, so the proof works on a few equations at a time and never
on the whole loss expanded.  A gradient once proved stands for the true one in later
proofs.  `gradcheck` compares against float64 central differences instead.

Example:
    >>> import symnet as sn
    >>> d = sn.derive(sn.Sequential(sn.Linear(3, 2), sn.Tanh(), sn.Linear(2, 2)), sn.MSELoss())
    >>> report = d.verify()
    >>> bool(report), report.checked
    (True, ['dYhat', 'dW2', 'db2', 'dA1', 'dZ1', 'dW1', 'db1'])
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from codegen.expr import evaluate
from symnet.symbolic.graph import LOSS, N
from symnet.symbolic.scalars import Scalars


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    """The outcome of `verify` or `gradcheck`: one `Check` per backward equation."""

    method: str
    checks: list[Check] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def checked(self) -> list[str]:
        return [c.name for c in self.checks]

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def __str__(self) -> str:
        lines = [f"{self.method}: {'all hold' if self else 'FAILED: ' + ', '.join(self.failed)}"]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f"  ({c.detail})" if c.detail
                                                              else "") for c in self.checks]
        return "\n".join(lines)


def _shrink(derivation, size: int, batch: int):
    """The derivation's equations at sizes ≤ ``size`` and batch ``batch``."""
    dims: dict = {N: batch}
    eqs = [*derivation.forward, *derivation.backward]
    for eq in eqs:
        for s in (*eq.atoms(sp.MatrixSymbol), *eq.atoms(sp.OneMatrix)):
            for d in s.shape:
                if d.is_Integer and d > 1:
                    dims.setdefault(d, sp.Integer(min(int(d), size)))
    replace = {}
    for eq in eqs:
        for s in eq.atoms(sp.MatrixSymbol):
            replace[s] = sp.MatrixSymbol(s.name, *(dims.get(d, d) for d in s.shape))
        for o in eq.atoms(sp.OneMatrix):
            replace[o] = sp.OneMatrix(*(dims.get(d, d) for d in o.shape))
    replace[N] = sp.Integer(batch)
    # Bodies keep the original constants (1/(C·N) stays consistent on both sides).
    shrink = [sp.Eq(eq.lhs.xreplace(replace), eq.rhs.xreplace(replace), evaluate=False)
              for eq in eqs]
    k = len(derivation.forward)
    return shrink[:k], shrink[k:]


def _leaf_values(forward, one_hot: bool) -> dict[str, sp.Matrix]:
    defined = {eq.lhs.name for eq in forward}
    env = {}
    for eq in forward:
        for s in eq.rhs.atoms(sp.MatrixSymbol):
            if s.name in defined or s.name in env:
                continue
            rows, cols = (int(d) for d in s.shape)
            if s.name == "Y" and one_hot:
                env[s.name] = sp.Matrix(rows, cols, lambda i, j, r=rows: int(i == j % r))
            else:
                env[s.name] = sp.Matrix(rows, cols, lambda i, j, n=s.name: sp.Symbol(
                    f"{n.lower()}_{i}{j}", real=True))
    return env


def _point(exprs, rng: random.Random) -> dict:
    """30-digit values for the free symbols of ``exprs``: targets in (0.05, 0.95)."""
    symbols = sorted(set().union(*(e.free_symbols for e in exprs)), key=lambda s: s.name)
    return {s: sp.Float(rng.uniform(0.05, 0.95) if s.name.startswith("y_")
                        else rng.uniform(-1.5, 1.5), 30) for s in symbols}


def _exp_generators(expr: sp.Expr) -> sp.Expr:
    """Replace each ``exp(c·m)`` by ``E_m**c`` with a fresh symbol ``E_m`` per ``m``.

    If the result cancels to zero as a rational function of independent ``E_m``, it is zero
    for the actual exponentials too, so this is a sound (and fast) proof step.
    """
    expr = expr.rewrite(sp.exp)
    # a**w with a symbolic w is exp(w·log a) by definition; one spelling for both sides.
    expr = expr.replace(lambda e: e.is_Pow and not e.exp.is_Number and e.base is not sp.E,
                        lambda e: sp.exp(e.exp * sp.log(e.base)))
    expr = sp.expand_power_exp(expr)
    generators: dict[sp.Expr, sp.Dummy] = {}
    replace = {}
    for atom in expr.atoms(sp.exp):
        coeff, base = atom.args[0].as_coeff_Mul()
        replace[atom] = generators.setdefault(base, sp.Dummy()) ** coeff
    return sp.together(expr.xreplace(replace))


def _branch_symbols(expr: sp.Expr) -> sp.Expr:
    """Replace each two-way choice on a condition ``c`` by ``s_c·a + (1 − s_c)·b``.

    One fresh symbol per distinct condition, shared by the forward value and its
    derivative; ``Heaviside(z)`` is the choice on ``z > 0``, ``Max(0, z)`` (ReLU) the same
    choice between ``z`` and 0.  A difference that vanishes for every ``s_c`` vanishes on
    every branch, so the proof stays sound.  One bottom-up pass, so a condition on a value
    that itself holds choices is spelled alike wherever it occurs; a choice is never
    rebuilt before it is replaced (``Max`` of large arguments is slow to construct).
    """
    selectors: dict[sp.Basic, sp.Dummy] = {}
    done: dict[sp.Basic, sp.Basic] = {}

    def select(condition, a, b):
        s = selectors.setdefault(condition, sp.Dummy("s"))
        return s * a + (1 - s) * b

    def walk(e):
        if e in done or not e.args:
            return done.get(e, e)
        args = [walk(a) for a in e.args]
        if isinstance(e, sp.Heaviside):
            out = select(sp.StrictGreaterThan(args[0], 0), 1, 0)
        elif isinstance(e, (sp.Max, sp.Min)) and len(args) == 2:
            a, b = args if args[0] != 0 else args[::-1]
            # Max(a, b) is a where a − b > 0; Min(a, b) is b there
            out = select(sp.StrictGreaterThan(a - b, 0), *((a, b) if isinstance(e, sp.Max)
                                                           else (b, a)))
        elif (isinstance(e, sp.Piecewise) and len(args) == 2 and args[1].cond == sp.true):
            (a, c), (b, _) = args
            out = select(c, a, b)
        else:
            out = e if all(x is y for x, y in zip(args, e.args)) else e.func(*args)
        done[e] = out
        return out

    return walk(expr)


def _zero(difference: sp.Expr) -> bool:
    if difference == 0:
        return True
    if difference.has(sp.Piecewise, sp.Heaviside, sp.Max, sp.Min):
        difference = _branch_symbols(difference)
    attempts = (lambda e: sp.cancel(_exp_generators(e)), sp.simplify,
                lambda e: sp.simplify(e.rewrite(sp.exp)))
    for attempt in attempts:
        try:
            if attempt(difference) == 0:
                return True
        except (TypeError, ValueError, NotImplementedError):
            continue
    return False


def _vanishes_somewhere(expr: sp.Expr, rng: random.Random) -> bool:
    """Whether ``expr`` is ~0 at a random point, every free symbol taken independently: a
    cheap filter before `_zero` (never a proof); True when the value can't be computed."""
    try:
        value = complex(sp.N(expr.xreplace(_point([expr], rng)), 30))
    except (TypeError, ValueError, ZeroDivisionError):
        return True
    return not abs(value) > 1e-20  # 30 digits: rounding stays far below


def _prove(difference: sp.Expr, s: Scalars, proved: dict, opaque: set,
           rng: random.Random) -> bool:
    """Prove ``difference`` zero by substituting definitions, latest first, until `_zero`
    shows it zero as a function of the symbols that remain (then it is zero for the values
    they stand for).  The symbols of proved gradients are kept until nothing else is left;
    the last resort is the difference in the leaves alone."""
    expr = difference
    while True:
        if _vanishes_somewhere(expr, rng) and _zero(expr):
            return True
        open_ = [v for v in expr.free_symbols if v in s.definitions and v not in opaque]
        if not open_:
            if not expr.free_symbols & opaque:
                return False
            opaque = set()
            continue
        latest = max(s.rank[v] for v in open_)
        expr = expr.xreplace({v: s.definitions[v].xreplace(proved) for v in open_
                              if s.rank[v] == latest})


def verify(derivation, size: int = 2, batch: int = 2, seed: int = 0) -> Report:
    """Prove each backward equation of ``derivation`` (see module docstring)."""
    forward, backward = _shrink(derivation, size, batch)
    one_hot = derivation.graph.loss.target_kind == "index"
    leaves = _leaf_values(forward, one_hot)
    s = Scalars(leaves)
    s.run_forward(forward, LOSS)
    true = s.chain_rule(forward, LOSS, {eq.lhs.name[1:] for eq in backward})
    derived = {eq.lhs.name: s.run_backward(eq) for eq in backward}
    rng = random.Random(seed)
    numbers = s.numbers(_point(list(leaves.values()), rng))
    proved: dict[sp.Symbol, sp.Symbol] = {}  # ∂V's entries → dV's, once dV = ∂V is proved
    report = Report("symbolic verification")
    for eq in backward:
        name = eq.lhs.name
        pairs = list(zip(derived[name], true[name[1:]]))
        worst = max(abs(complex(numbers[d] - numbers[t])) for d, t in pairs)
        if not worst < 1e-9:
            report.checks.append(Check(name, False, f"differs by {worst:.3g} at a random "
                                                    "point"))
            continue
        opaque = set(proved.values())
        unproved = sum(not _prove(d - t, s, proved, opaque, rng)
                       for d, t in pairs)
        if not unproved:
            proved.update((t, d) for d, t in pairs)
        report.checks.append(Check(name, unproved == 0,
                                   f"{unproved} entries not proved equal" if unproved else ""))
    return report


def gradcheck(derivation, size: int = 3, batch: int = 3, seed: int = 0, h: float = 1e-6,
              rtol: float = 1e-6) -> Report:
    """Compare derived parameter gradients with float64 central differences of the loss."""
    forward, backward = _shrink(derivation, size, batch)
    one_hot = derivation.graph.loss.target_kind == "index"
    symbolic = _leaf_values(forward, one_hot)
    rng = np.random.default_rng(seed)
    numbers = {}
    for name, m in symbolic.items():
        for s in m.free_symbols:
            numbers[s] = rng.uniform(0.05, 0.95) if name == "Y" else rng.uniform(-1.5, 1.5)

    def run(values: dict, equations) -> dict:
        # Numbers all the way (evalf after each equation): a symbolic loss lambdified
        # instead grows with depth until a 4-layer ReLU net takes minutes.
        env = {name: m.xreplace(values) for name, m in symbolic.items()}
        for eq in equations:
            env[eq.lhs.name] = evaluate(eq.rhs, env).evalf()
        return env

    def loss(values: dict) -> float:
        return float(run(values, forward)[LOSS.name])

    base = {s: sp.Float(v) for s, v in numbers.items()}
    env = run(base, [*forward, *backward])
    report = Report("central differences")
    for eq in backward:
        name = eq.lhs.name[1:]
        if name not in derivation.graph.params:
            continue
        derived = np.array(env[eq.lhs.name], dtype=float)
        numeric = np.zeros_like(derived)
        for (i, j), s in np.ndenumerate(np.array(symbolic[name], dtype=object)):
            plus, minus = dict(base), dict(base)
            plus[s] += h
            minus[s] -= h
            numeric[i, j] = (loss(plus) - loss(minus)) / (2 * h)
        scale = max(np.abs(numeric).max(), 1e-3)
        err = float(np.abs(derived - numeric).max() / scale)
        report.checks.append(Check(eq.lhs.name, err < rtol, f"relative error {err:.2e}"))
    return report
