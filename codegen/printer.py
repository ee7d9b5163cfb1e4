"""Scalar expressions → Python source calling ``math.*``: one printer for @njit and @cuda.jit.

Numerically delicate forms print as stable helpers: ``log(1 + exp(x))`` → ``_softplus(x)``,
``1/(1 + exp(−x))`` → ``_sigmoid(x)``, ``log(1 + x)`` → ``math.log1p(x)``.

Example:
    >>> import sympy as sp
    >>> x = sp.Symbol("x")
    >>> kernel_code(sp.log(1 + sp.exp(x)) + sp.Heaviside(x))
    '_softplus(x) + (1.0 if x > 0 else 0.0)'
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

HELPERS = '''
@{jit}
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@{jit}
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
'''


def _one_plus_exp(base: sp.Expr):
    """``u`` if ``base`` is ``1 + exp(u)``, else None."""
    if isinstance(base, sp.Add) and len(base.args) == 2 and sp.S.One in base.args:
        other = base.args[0] if base.args[1] == 1 else base.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


class _Logistic(sp.Function):
    """σ(u) = 1/(1 + e⁻ᵘ) inside kernels, printed ``_sigmoid(u)``: one opaque call, so common
    subexpression elimination cannot split it back into eᵘ and 1/(1 + eᵘ)."""

    nargs = 1


def stable(expr: sp.Expr) -> sp.Expr:
    """``expr`` with its logistic quotients as σ: eᵘ/(1 + eᵘ) → σ(u), eᵘ/(1 + eᵘ)² →
    σ(u)·σ(−u), (1 + eᵘ)⁻ⁿ → σ(−u)ⁿ.  As written, each is ∞/∞ = NaN once eᵘ overflows
    (u > 88 in float32: SiLU′, softplus′, Mish′ at large inputs); σ is finite for every u.

    Example:
        >>> x = sp.Symbol("x")
        >>> stable(x * sp.exp(-x) / (1 + sp.exp(-x)) ** 2)
        x*_Logistic(-x)*_Logistic(x)
    """
    if not isinstance(expr, sp.Basic) or expr.is_Atom or not expr.args:
        return expr
    if isinstance(expr, sp.Mul):
        factors = list(expr.args)
        for k, f in enumerate(factors):
            if not isinstance(f, sp.exp):
                continue
            u = f.args[0]
            for m, g in enumerate(factors):
                if isinstance(g, sp.Pow) and g.exp in (-1, -2) and _one_plus_exp(g.base) == u:
                    rest = sp.Mul(*(h for n, h in enumerate(factors) if n not in (k, m)))
                    logistic = _Logistic(u) * (_Logistic(-u) if g.exp == -2 else 1)
                    return stable(rest) * logistic
    if isinstance(expr, sp.Pow) and expr.exp.is_Integer and expr.exp < 0:
        u = _one_plus_exp(expr.base)
        if u is not None:
            return _Logistic(-u) ** (-expr.exp)
    args = tuple(stable(a) for a in expr.args)
    return expr if args == expr.args else expr.func(*args)


class KernelPrinter(PythonCodePrinter):
    """sympy → kernel source; arrays are ``sympy.Indexed``, printed ``name[i, j]``."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})

    def _print_Indexed(self, expr):
        return f"{expr.base.label}[{', '.join(self._print(i) for i in expr.indices)}]"

    def _print__Logistic(self, expr):
        return f"_sigmoid({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr):
        return f"(1.0 if {self._print(expr.args[0])} > 0 else 0.0)"

    def _print_log(self, expr):
        arg = expr.args[0]
        u = _one_plus_exp(arg)
        if u is not None:
            return f"_softplus({self._print(u)})"
        if isinstance(arg, sp.Add) and sp.S.One in arg.args:
            return f"math.log1p({self._print(arg - 1)})"
        return f"math.log({self._print(arg)})"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        u = _one_plus_exp(base)
        if exp == -1 and u is not None:
            return f"_sigmoid({self._print(-u)})"
        if exp == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if exp == 2:
            b = self._print(base)
            # Parenthesised whole: it may stand in a denominator (a/(b*b), not a/b*b).
            return f"(({b})*({b}))" if not base.is_Atom and not isinstance(base, sp.Indexed) \
                else f"({b}*{b})"
        return super()._print_Pow(expr, rational)

    def _print_Rational(self, expr):
        return f"{float(expr)!r}"

    def _print_Half(self, expr):
        return "0.5"


_PRINTER = KernelPrinter()


def kernel_code(expr: sp.Expr) -> str:
    """Python source for a scalar expression inside a kernel."""
    return _PRINTER.doprint(stable(expr))
