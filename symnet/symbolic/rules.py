"""Vector-Jacobian product rules, one per operation, each obtained from SymPy.

A rule takes a forward equation ``V = rhs`` and the symbol ``G`` holding dL/dV and returns
``{input: contribution to dL/d input}``.  Linear algebra asks SymPy's matrix calculus
(``Trace(Gᵀ·rhs).diff(input)``), elementwise functions ask ``sympy.diff`` for f′ and
rewrite it in terms of the output when that is a cheap polynomial (σ′ = A ⊙ (1 − A)).

Example:
    >>> import sympy as sp
    >>> W = sp.MatrixSymbol("W2", 3, 8); A = sp.MatrixSymbol("A1", 8, 5)
    >>> Z = sp.MatrixSymbol("Z2", 3, 5); G = sp.MatrixSymbol("dZ2", 3, 5)
    >>> sorted((str(k), str(v)) for k, v in vjp(sp.Eq(Z, W * A), G).items())
    [('A1', 'W2.T*dZ2'), ('W2', 'dZ2*A1.T')]
"""

from __future__ import annotations

import functools
import math
import random
from functools import singledispatch

import mpmath
import numpy as np
import sympy as sp

from codegen.expr import Elementwise, LogSoftmax, LogSoftmaxVJP, Softmax, SoftmaxVJP, Total
from codegen.printer import HELPERS, kernel_code


@singledispatch
def _rule(rhs: sp.Basic, lhs: sp.Basic, G: sp.Basic) -> dict:
    raise TypeError(f"no derivative rule for {type(rhs).__name__} (in {lhs} = {rhs})")


def vjp(eq: sp.Eq, G: sp.Basic) -> dict:
    """Contributions of ``eq`` to the gradients of its inputs, given ``G = dL/d(eq.lhs)``."""
    return _rule(eq.rhs, eq.lhs, G)


# --- linear algebra: SymPy's matrix calculus, once per shape pattern -----------------------

def _canonical(rhs: sp.MatrixExpr) -> tuple[sp.MatrixExpr, dict, dict]:
    """``rhs`` over placeholder symbols and symbolic sizes, so one derivation serves all."""
    dims: dict[sp.Basic, sp.Symbol] = {}

    def dim(d):
        return dims.setdefault(d, sp.Symbol(f"_d{len(dims)}", integer=True, positive=True))

    symbols = sorted(rhs.atoms(sp.MatrixSymbol), key=lambda s: s.name)
    to_place = {s: sp.MatrixSymbol(f"_P{k}", dim(s.shape[0]), dim(s.shape[1]))
                for k, s in enumerate(symbols)}
    ones = {o: sp.OneMatrix(dim(o.shape[0]), dim(o.shape[1])) for o in rhs.atoms(sp.OneMatrix)}
    canonical = rhs.xreplace({**to_place, **ones})
    back = {v: k for k, v in to_place.items()}
    back.update({v: k for k, v in dims.items()})
    return canonical, to_place, back


@functools.cache
def _linear_rule(canonical: sp.MatrixExpr, out_rows, out_cols) -> tuple[tuple, ...]:
    G = sp.MatrixSymbol("_G", out_rows, out_cols)
    trace = sp.Trace(G.T * canonical)
    return tuple((s, trace.diff(s)) for s in sorted(canonical.atoms(sp.MatrixSymbol),
                                                      key=lambda s: s.name) if s != G)


def _linear(rhs, lhs, G):
    canonical, to_place, back = _canonical(rhs)
    c_rows, c_cols = canonical.shape
    results = _linear_rule(canonical, c_rows, c_cols)
    placeholder_G = sp.MatrixSymbol("_G", c_rows, c_cols)
    back = {**back, placeholder_G: G}
    return {back[s]: d.xreplace(back) for s, d in results}


_rule.register(sp.MatMul)(_linear)
_rule.register(sp.MatAdd)(_linear)


# --- elementwise functions: sympy.diff, then the output form where it is cheap ------------

def _numeric(expr: sp.Expr, values: dict) -> sp.Float:
    """``expr`` at ``values`` to 30 digits; ValueError if not a finite real number."""
    value = sp.N(expr.xreplace(values), 30)
    real, imag = value.as_real_imag()
    if not (real.is_Number and imag.is_Number and real.is_finite) or abs(imag) > 1e-25:
        raise ValueError(f"not a finite real number: {value}")
    return sp.Float(real, 30)


@functools.cache
def output_form(f: sp.Expr, x: sp.Symbol, extras: tuple = ()) -> sp.Expr | None:
    """``diff(f, x)`` as a polynomial of degree ≤ 2 in ``a = f(x)`` (and linear in each of
    ``extras``) when SymPy can prove one exists, else None.  The polynomial is found by
    fitting at random rational points and proved by simplification.

    Example:
        >>> x = sp.Symbol("x", real=True)
        >>> output_form(1 / (1 + sp.exp(-x)), x)
        _a*(1 - _a)
    """
    return _polynomial_in_output(sp.diff(f, x), f, x, extras)


def _polynomial_in_output(expr: sp.Expr, f: sp.Expr, x: sp.Symbol, extras: tuple = ()):
    a = sp.Symbol("_a", real=True)
    monomials = [a**k for k in range(3)]
    for e in extras:
        monomials += [m * e for m in monomials]
    rng = random.Random(0)
    points = []
    for _ in range(len(monomials) + 2):
        point = {x: sp.Rational(rng.randint(-300, 300), 97)}
        point.update({e: sp.Rational(rng.randint(-100, 100), 89) for e in extras})
        points.append(point)
    try:
        fitted = [[_numeric(m.xreplace({a: f}), pt) for m in monomials] for pt in points]
        targets = [_numeric(expr, pt) for pt in points]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    A, b = sp.Matrix(fitted), sp.Matrix(targets)
    try:
        coeffs = (A.T * A).LUsolve(A.T * b)
    except (ValueError, ZeroDivisionError):
        return None
    residual = max(abs(v) for v in (A * coeffs - b))
    if residual > 1e-20:
        return None
    exact = [sp.nsimplify(c, rational=True, tolerance=1e-20) for c in coeffs]
    candidate = _textbook(sum(c * m for c, m in zip(exact, monomials)))
    difference = expr - candidate.xreplace({a: f})
    if sp.simplify(difference) != 0 and sp.simplify(difference.rewrite(sp.exp)) != 0:
        return None
    return candidate


def _textbook(poly: sp.Expr) -> sp.Expr:
    """The product form ``a·(1 − a)`` when it is no longer than the expanded ``1 − a²``."""
    expanded = sp.expand(poly)
    factored = sp.factor(poly)
    coeff, rest = factored.as_coeff_Mul()
    if coeff < 0:
        factors = list(sp.Mul.make_args(rest))
        flip = next((k for k, f in enumerate(factors) if isinstance(f, sp.Add)), None)
        if flip is not None:
            factors[flip] = sp.expand(-factors[flip])
            factored = -coeff * sp.Mul(*factors)
    if sp.count_ops(factored) <= sp.count_ops(expanded):
        return factored
    return expanded


#: where a derivative's printed form must stay finite when its true value is: the tails in
#: float32 (eˣ overflows past 88) and float64 (past 709), and ordinary values
PROBES = {np.float32: (-100.0, -30.0, 0.7, 30.0, 100.0), np.float64: (-800.0, 800.0)}


def _as_kernel(expr: sp.Expr, x: sp.Symbol):
    """``expr`` as the kernel computes it: its printed source, run on NumPy scalars (which
    overflow to ∞ like the kernel's ``math.exp``, where Python's ``math`` would raise)."""
    probe = sp.Symbol("x_probe", real=True)
    namespace = {"math": _NumpyMath()}
    exec(HELPERS.format(jit="(lambda f: f)"), namespace)  # the kernels' own helpers
    return eval(f"lambda x_probe: {kernel_code(expr.xreplace({x: probe}))}", namespace)


class _NumpyMath:
    """``math.*`` names resolved to NumPy's (dtype-preserving), else to ``math``'s."""

    def __getattr__(self, name: str):
        return getattr(np, name, None) or getattr(math, name)


def stays_finite(form: sp.Expr, reference: sp.Expr, x: sp.Symbol) -> bool:
    """Whether the kernel's ``form`` is finite at every probe where ``reference`` is."""
    try:
        run = _as_kernel(form, x)
    except Exception:  # noqa: BLE001 - a form that doesn't print or run is not stable
        return False
    exact = sp.lambdify(x, reference, "mpmath")  # 30 digits: no overflow, no cancellation
    for dtype, points in PROBES.items():
        for point in points:
            with mpmath.workdps(30):
                true = complex(exact(mpmath.mpf(point)))
            if true.imag or not abs(true.real) < float(np.finfo(dtype).max):
                continue
            with np.errstate(all="ignore"):
                try:
                    value = run(dtype(point))
                except (ArithmeticError, ValueError):
                    return False
            if not np.isfinite(value):
                return False
    return True


def simplest(expr: sp.Expr, x: sp.Symbol | None = None) -> sp.Expr:
    """The shortest of a few SymPy normal forms of ``expr`` — with ``x``, the shortest of
    those the kernel computes without overflow (SiLU′'s shortest form divides by cosh²(x/2),
    ∞/∞ for large x; its raw form prints through stable sigmoids)."""
    forms = [expr, sp.simplify(expr), sp.factor(sp.cancel(expr))]
    if x is not None:
        forms = [f for f in forms if stays_finite(f, expr, x)] or forms
    return min(forms, key=lambda e: (sp.count_ops(e), len(str(e))))


@functools.cache
def derivative(f: sp.Expr, x: sp.Symbol) -> tuple[sp.Expr, bool]:
    """f′ and whether it is written in terms of the output ``_a`` (True) or the input ``x``."""
    in_output = output_form(f, x)
    if in_output is not None:
        return in_output, True
    fprime = sp.diff(f, x)
    if isinstance(fprime, sp.Heaviside):
        return fprime, False  # the textbook step, printed as (Z > 0)
    return simplest(fprime, x), False


@_rule.register
def _(rhs: Elementwise, lhs, G):
    if len(rhs.operands) > 1:
        return _several_operands(rhs, G)
    (operand,) = rhs.operands
    (v,) = rhs.body.variables
    fprime, uses_output = derivative(rhs.body.expr, v)
    g = sp.Symbol("_g", real=True)
    source = lhs if uses_output else operand
    var = sp.Symbol("_a", real=True) if uses_output else v
    body = sp.Lambda((g, var), g * fprime)
    return {operand: Elementwise(body, G, source)}


def _several_operands(rhs: Elementwise, G) -> dict:
    """``∂f/∂xₖ`` from ``sympy.diff`` for each operand; a broadcast operand's contribution
    is summed back to its own shape: over the samples for ``b·1ᵀ``, over the features for
    ``1·r``."""
    g = sp.Symbol("_g", real=True)
    body = rhs.body.expr
    pairs = list(zip(rhs.operands, rhs.body.variables))
    found: dict = {}
    for operand in dict.fromkeys(rhs.operands):  # an operand used twice (x ⊙ x): one sum
        partial = simplest(sum(sp.diff(body, v) for o, v in pairs if o == operand))
        if partial == 0:
            continue
        if partial == 1:
            contribution = G
        else:
            used = [(o, w) for o, w in pairs if w in partial.free_symbols]
            contribution = Elementwise(sp.Lambda((g, *(w for _, w in used)), g * partial), G,
                                       *(o for o, _ in used))
        target, contribution = _unbroadcast(operand, contribution)
        found[target] = contribution if target not in found else \
            sp.MatAdd(found[target], contribution, evaluate=False)
    return found


def _unbroadcast(operand: sp.MatrixExpr, contribution: sp.MatrixExpr):
    """``(symbol, its share)`` of an operand that may be a broadcast ``b·1ᵀ`` or ``1·r``."""
    if isinstance(operand, sp.MatMul) and len(operand.args) == 2:
        first, second = operand.args
        if isinstance(second, sp.OneMatrix):  # b·1ᵀ: the column sums the samples
            return first, sp.MatMul(contribution, second.T, evaluate=False)
        if isinstance(first, sp.OneMatrix):  # 1·r: the row sums the features
            return second, sp.MatMul(first.T, contribution, evaluate=False)
    return operand, contribution


# --- column operations: softmax and log-softmax ------------------------------------------

@_rule.register
def _(rhs: Softmax, lhs, G):
    return {rhs.args[0]: SoftmaxVJP(lhs, G)}


@_rule.register
def _(rhs: LogSoftmax, lhs, G):
    return {rhs.args[0]: LogSoftmaxVJP(lhs, G)}


# --- the loss: scale · Σ ℓ(P, Y) --------------------------------------------------------

def loss_gradient(rhs: sp.Expr, prediction: sp.Eq | None = None):
    """``(P, dP)`` for ``L = scale·Total(ℓ(P, Y))``: dP = scale·∂ℓ/∂p entry by entry.

    ``prediction`` is ``Ŷ = σ(P)`` for a loss on logits: ∂ℓ/∂p is then written in terms of
    Ŷ when it is a polynomial there (binary cross-entropy with logits gives Ŷ − Y).
    """
    totals = list(rhs.atoms(Total))
    if len(totals) != 1:
        raise TypeError(f"a loss must be scale·Total(ℓ), got {rhs}")
    (total,) = totals
    scale = sp.simplify(rhs / total)
    body = total.matrix
    p, t = body.body.variables
    pred, target = body.operands
    grad = sp.diff(body.body.expr, p)
    if prediction is not None and prediction.rhs.operands == (pred,):
        link = prediction.rhs.body.expr.xreplace({prediction.rhs.body.variables[0]: p})
        rewritten = _polynomial_in_output(grad, link, p, (t,))
        if rewritten is not None:
            a = sp.Symbol("_a", real=True)
            lam = sp.Lambda((a, t), simplest(scale * rewritten))
            return pred, Elementwise(lam, prediction.lhs, target)
    return pred, Elementwise(sp.Lambda((p, t), simplest(scale * grad)), pred, target)
