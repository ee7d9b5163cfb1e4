"""Equations on small explicit matrices, one scalar symbol per entry: what `verify` proves on.

Every entry an equation defines gets a fresh symbol (``Z1[0,1]``) whose definition is that
equation's expansion in the symbols of its own inputs, so no expression is ever larger
than one equation on one small matrix, however deep the network.  Three families of
symbols are defined this way:

* the forward values (``Z1[i,j]``), by `codegen.expr.evaluate` of each forward equation;
* the true gradients (``∂Z1[i,j]``), by the chain rule run backwards one equation at a
  time: an entry's gradient sums, over every entry that reads it, ``sympy.diff`` of that
  entry's expansion times the reader's gradient (reverse mode, on scalars, by SymPy's
  ``diff``: nothing of the derivation's rules is used);
* the derived gradients (``dZ1[i,j]``), by evaluating the backward equations under test.

Substituting definitions for symbols, in any order, never changes a value, which is what
lets a proof stop at the first level where a difference cancels.

Example:
    >>> import sympy as sp
    >>> from codegen.expr import Total
    >>> W, Z, L = sp.MatrixSymbol("W", 1, 2), sp.MatrixSymbol("Z", 1, 1), sp.Symbol("L")
    >>> forward = [sp.Eq(Z, W * sp.MatrixSymbol("X", 2, 1)), sp.Eq(L, Total(Z) ** 2)]
    >>> s = Scalars({"W": sp.Matrix([sp.symbols("w0 w1")]), "X": sp.Matrix([2, 3])})
    >>> s.run_forward(forward, L)
    >>> s.resolve(s.chain_rule(forward, L, {"W"})["W"][0, 1])  # d(2·w0 + 3·w1)²/dw1
    12*w0 + 18*w1
"""

from __future__ import annotations

import sympy as sp

from codegen.expr import evaluate


class Scalars:
    """Named matrices of scalar symbols, each symbol defined by one equation's expansion.

    ``values`` maps a name (``Z1``, ``∂Z1``, ``dZ1``) to its matrix; leaves hold symbols
    (or numbers, for a one-hot target) with no definition.  ``definitions`` keeps the
    order symbols were defined in, so each uses only symbols defined before it; ``rank``
    says how late in the chain each symbol's value is formed (forward values first, then
    gradients, from the loss back to the leaves), the order a proof undoes them in.
    """

    def __init__(self, leaves: dict[str, sp.Matrix]):
        self.values: dict[str, sp.Matrix] = dict(leaves)
        self.definitions: dict[sp.Symbol, sp.Expr] = {}
        self.rank: dict[sp.Symbol, int] = {}
        self.ranks: dict[str, int] = {}  # a forward name → the rank of its gradients

    def define(self, name: str, local: sp.Matrix, rank: int) -> sp.Matrix:
        symbols = sp.Matrix(*local.shape, lambda i, j: sp.Symbol(f"{name}[{i},{j}]", real=True))
        for symbol, expr in zip(symbols, local):
            self.definitions[symbol] = expr
            self.rank[symbol] = rank
        self.values[name] = symbols
        return symbols

    def run_forward(self, forward: list[sp.Eq], loss: sp.Symbol) -> None:
        """Define the forward values, equation by equation (the loss as a 1×1 matrix)."""
        for k, eq in enumerate(forward):
            local = evaluate(eq.rhs, self.values)
            self.define(eq.lhs.name, local if eq.lhs != loss else sp.Matrix([[local]]), k)

    def chain_rule(self, forward: list[sp.Eq], loss: sp.Symbol,
                   leaves: set[str]) -> dict[str, sp.Matrix]:
        """Define ``∂V`` = dL/dV for every forward value and each name in ``leaves``."""
        gradient = {loss.name: sp.Matrix([[1]])}
        terms: dict[sp.Symbol, list[sp.Expr]] = {}  # an entry → its readers' contributions
        late = 2 * len(forward)
        for k in reversed(range(len(forward))):
            eq = forward[k]
            name = eq.lhs.name
            if eq.lhs != loss:
                gradient[name] = self._gather(name, terms, late - k)
            inputs = set().union(*(self.values[m.name].free_symbols
                                   for m in eq.rhs.atoms(sp.MatrixSymbol)))
            for entry, g in zip(self.values[name], gradient[name]):
                local = self.definitions[entry]
                for v in local.free_symbols & inputs:
                    terms.setdefault(v, []).append(sp.diff(local, v) * g)
        for name in leaves:
            if name not in gradient:
                gradient[name] = self._gather(name, terms, late + 1)
        return gradient

    def _gather(self, name: str, terms: dict, rank: int) -> sp.Matrix:
        value = self.values[name]
        sums = [sp.Add(*terms.pop(v, ())) if isinstance(v, sp.Symbol) else sp.S.Zero
                for v in value]
        self.ranks[name] = rank
        return self.define("∂" + name, sp.Matrix(*value.shape, sums), rank)

    def run_backward(self, eq: sp.Eq) -> sp.Matrix:
        """Define the derived gradient ``eq.lhs`` (``dV``), at the rank of ``∂V``."""
        rank = self.ranks[eq.lhs.name[1:]]
        return self.define(eq.lhs.name, evaluate(eq.rhs, self.values), rank)

    def resolve(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` in the leaves alone: every definition substituted (small sizes only)."""
        while True:
            inner = {v: self.definitions[v] for v in expr.free_symbols if v in self.definitions}
            if not inner:
                return expr
            expr = expr.xreplace(inner)

    def numbers(self, point: dict[sp.Symbol, sp.Expr], digits: int = 30) -> dict:
        """Every defined symbol's value, given numbers for the leaves' symbols."""
        values = dict(point)
        for symbol, expr in self.definitions.items():
            values[symbol] = sp.N(expr.xreplace(values), digits)
        return values
