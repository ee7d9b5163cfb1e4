"""Equations as Unicode text, LaTeX and a Mermaid flowchart, in the seed's notation.

Matrix products print as ``·``, entry-wise products as ``⊙``, transposes as ``ᵀ`` and the
ones vector as ``1``; an elementwise body prints with its operands' names, so
``dZ1 = dA1 ⊙ A1 ⊙ (1 − A1)``.  One SymPy printer per format, ``_print_<Class>`` methods.

Example:
    >>> import sympy as sp
    >>> A = sp.MatrixSymbol("A1", 3, 2); G = sp.MatrixSymbol("dZ2", 4, 2)
    >>> text(G * A.T)
    'dZ2·A1ᵀ'
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from codegen.expr import (
    LATEX_ESCAPES,
    Elementwise,
    LogSoftmaxVJP,
    SoftmaxVJP,
    Total,
    broadcast_base,
    visible,
)

NAMES = {"Yhat": "Ŷ", "lr": "η", "beta1": "β₁", "beta2": "β₂", "eps": "ε",
         "weight_decay": "λ", "momentum": "μ", "dampening": "τ"}
LATEX_NAMES = {"Yhat": r"\hat{Y}", "lr": r"\eta", "beta1": r"\beta_1", "beta2": r"\beta_2",
               "eps": r"\epsilon", "weight_decay": r"\lambda", "momentum": r"\mu",
               "dampening": r"\tau", "L": r"\mathcal{L}"}
SUPERSCRIPTS = str.maketrans("0123456789-t", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻ᵗ")
PREFIXED = re.compile(r"^(mhat|vhat|d|m|v|g|n)([A-Z]\w*|b\d+)$")


def display_name(name: str, table: dict[str, str]) -> str:
    """``dYhat`` → ``dŶ``, ``mhatW1`` → ``m̂W1``; table lookups for the optimizer's scalars."""
    if name in table:
        return table[name]
    match = PREFIXED.match(name)
    if match:
        prefix, rest = match.groups()
        return {"mhat": "m̂", "vhat": "v̂"}.get(prefix, prefix) + display_name(rest, table)
    return name


class _Hadamard:
    """Shared printing of elementwise bodies: ⊙ between matrix factors, · before scalars."""

    hadamard = " ⊙ "
    scalar_times = "·"

    def _matrix_valued(self, expr: sp.Expr) -> bool:
        return any(s.name in self._operand_names for s in expr.free_symbols)

    def _factor(self, f: sp.Expr) -> str:
        s = self._print(f)
        return f"({s})" if isinstance(f, sp.Add) or (f.is_Rational and not f.is_Integer) else s

    def _product(self, factors: list[sp.Expr]) -> str:
        scalars = [self._factor(f) for f in factors if not self._matrix_valued(f)]
        matrices = [self._factor(f) for f in factors if self._matrix_valued(f)]
        head = self.scalar_times.join(scalars)
        tail = self.hadamard.join(matrices)
        return self.scalar_times.join(p for p in (head, tail) if p)

    def _body_mul(self, expr: sp.Mul) -> str:
        coeff, factors = expr.as_coeff_mul()
        sign = ""
        if coeff < 0:
            sign, coeff = "-", -coeff
        numer = [sp.Integer(coeff.p)] if coeff.p != 1 else []
        denom = [sp.Integer(coeff.q)] if coeff.q != 1 else []
        for f in factors:
            if f.is_Pow and f.exp.is_Rational and f.exp < 0:
                denom.append(f.base ** (-f.exp))
            else:
                numer.append(f)
        top = self._product(numer) if numer else "1"
        if not denom:
            return sign + top
        bottom = self._product(denom)
        if len(denom) > 1:
            bottom = f"({bottom})"
        return self._fraction(sign, top, bottom)


class TextPrinter(_Hadamard, StrPrinter):
    """Unicode text: ``dZ1 = dA1 ⊙ A1 ⊙ (1 − A1)``."""

    def __init__(self):
        super().__init__({"order": "none"})
        self._operand_names: set[str] = set()
        self._operand_texts: dict[str, str] = {}

    def _fraction(self, sign, top, bottom):
        return f"{sign}{top}/{bottom}"

    def _print_MatrixSymbol(self, expr):
        return display_name(expr.name, NAMES)

    def _print_Symbol(self, expr):
        return display_name(expr.name, NAMES)

    def _print_Transpose(self, expr):
        return self._print(expr.arg) + "ᵀ"

    def _print_OneMatrix(self, expr):
        return "1ᵀ" if expr.shape[0] == 1 else "1"

    def _print_MatMul(self, expr):
        parts = []
        for a in expr.args:
            s = self._print(a)
            if a == -1 and not parts:
                parts.append("-")
                continue
            wrap = isinstance(a, (sp.MatAdd, Elementwise)) and " " in s or \
                (not a.is_Matrix and not (a.is_Integer or a.is_Symbol))
            parts.append(f"({s})" if wrap else s)
        head = "-" if parts[:1] == ["-"] else ""
        return head + "·".join(parts[1:] if head else parts)

    def _print_MatAdd(self, expr):
        return " + ".join(self._print(a) for a in expr.args).replace("+ -", "- ")

    def _print_Mul(self, expr):
        totals = [f for f in expr.args if isinstance(f, Total)]
        if totals and not self._operand_names:
            scale = self._print(expr / totals[0])
            scale = "" if scale == "1" else (f"-({scale[1:]})·" if scale.startswith("-")
                                             else f"({scale})·")
            return scale + self._print(totals[0])
        return self._body_mul(expr)

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.as_base_exp()
        b = self._factor(base) if not isinstance(base, sp.Pow) else f"({self._print(base)})"
        if exp == sp.S.Half:
            return f"√{b}" if not isinstance(base, sp.Add) else f"√({self._print(base)})"
        if (exp.is_Integer and exp > 0) or exp == sp.Symbol("t", integer=True, positive=True):
            return b + str(exp).translate(SUPERSCRIPTS)
        if exp.is_Integer and exp < 0:
            return f"1/{b}" if exp == -1 else f"1/{b}{str(-exp).translate(SUPERSCRIPTS)}"
        return f"{b}^{self._factor(exp)}"

    def _print_Heaviside(self, expr):
        return f"({self._print(expr.args[0])} > 0)"

    def _print_Piecewise(self, expr):
        (a, cond), (b, _) = expr.args[0], expr.args[-1]
        return f"where({self._print(cond)}, {self._print(a)}, {self._print(b)})"

    def _print_Elementwise(self, expr):
        names = [self._print(broadcast_base(op)) for op in expr.operands]
        if expr.label and len(names) == 1:
            return f"{visible(expr.label)}({names[0]})"
        return _print_body(self, expr, names)

    def _print_Softmax(self, expr):
        return f"softmax({self._print(expr.args[0])})"

    def _print_LogSoftmax(self, expr):
        return f"log_softmax({self._print(expr.args[0])})"

    def _print_SoftmaxVJP(self, expr):
        s, g = (self._print(a) for a in expr.args)
        return f"{s} ⊙ ({g} − 1·1ᵀ({s} ⊙ {g}))"

    def _print_LogSoftmaxVJP(self, expr):
        lp, g = (self._print(a) for a in expr.args)
        return f"{g} − exp({lp}) ⊙ 1·1ᵀ{g}"

    def _print_Total(self, expr):
        inner = expr.matrix
        if isinstance(inner, Elementwise):
            return f"Σ {_print_body(self, inner, [self._print(o) for o in inner.operands])}"
        return f"Σ {self._print(inner)}"


def _print_body(printer, expr: Elementwise, names: list[str]) -> str:
    """Print ``expr.body`` with each variable shown as its operand's name."""
    stand_ins = [sp.Symbol(f"__operand{k}", real=True) for k in range(len(names))]
    value = expr.body(*stand_ins)
    previous = printer._operand_names, printer._operand_texts
    printer._operand_names = {s.name for s in stand_ins}
    printer._operand_texts = {s.name: n for s, n in zip(stand_ins, names)}
    try:
        out = printer._print(value)
    finally:
        printer._operand_names, printer._operand_texts = previous
    for k in reversed(range(len(names))):
        out = out.replace(f"__operand{k}", names[k])
    return out


def _unwrap(s: str) -> str:
    """``(a + b)`` → ``a + b``, but ``(a + b)·(c)`` stays whole: only one enclosing pair."""
    if not (s.startswith("(") and s.endswith(")")):
        return s
    depth = 0
    for ch in s[1:-1]:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return s
    return s[1:-1] if depth == 0 else s


class LaTeXPrinter(_Hadamard, LatexPrinter):
    """LaTeX: ``dZ^{(1)} = dA^{(1)} \\odot …`` in an aligned block."""

    hadamard = r" \odot "
    scalar_times = r" \cdot "

    def __init__(self):
        super().__init__()
        self._operand_names: set[str] = set()
        self._operand_texts: dict[str, str] = {}

    def _fraction(self, sign, top, bottom):
        sign = "-" if sign else ""
        return rf"{sign}\frac{{{_unwrap(top)}}}{{{_unwrap(bottom)}}}"

    def _name(self, name: str) -> str:
        if name in LATEX_NAMES:
            return LATEX_NAMES[name]
        match = PREFIXED.match(name)
        if match:
            prefix, rest = match.groups()
            head = {"mhat": r"\hat{m}", "vhat": r"\hat{v}"}.get(prefix, rf"\mathrm{{{prefix}}}")
            return head + self._name(rest)
        head = name.rstrip("0123456789_")
        digits = name[len(head):].strip("_")
        return f"{head}^{{({digits})}}" if digits else head

    def _print_MatrixSymbol(self, expr):
        return self._name(expr.name)

    def _print_Symbol(self, expr, style="plain"):
        return self._name(expr.name) if not expr.name.startswith("__") else expr.name

    def _print_OneMatrix(self, expr):
        return r"\mathbf{1}^{T}" if expr.shape[0] == 1 else r"\mathbf{1}"

    def _print_Mul(self, expr):
        if not self._operand_names:
            return super()._print_Mul(expr)
        return self._body_mul(expr)

    def _print_Heaviside(self, expr):
        return rf"[{self._print(expr.args[0])} > 0]"

    def _print_Pow(self, expr):
        base = self._print(expr.base)
        # An operand stand-in prints bare here but becomes e.g. A^{(1)}: brace it too.
        if "^" in self._operand_texts.get(base, base) and expr.exp != sp.S.Half:
            return rf"\left({base}\right)^{{{self._print(expr.exp)}}}"
        return super()._print_Pow(expr)

    def _print_Elementwise(self, expr):
        names = [self._print(broadcast_base(op)) for op in expr.operands]
        if expr.label and len(names) == 1:
            escaped = visible(expr.label).translate(LATEX_ESCAPES)
            label = {"σ": r"\sigma"}.get(expr.label, rf"\operatorname{{{escaped}}}")
            return rf"{label}\left({names[0]}\right)"
        return _print_body(self, expr, names)

    def _print_Softmax(self, expr):
        return rf"\operatorname{{softmax}}\left({self._print(expr.args[0])}\right)"

    def _print_LogSoftmax(self, expr):
        return rf"\operatorname{{log\_softmax}}\left({self._print(expr.args[0])}\right)"

    def _print_SoftmaxVJP(self, expr):
        s, g = (self._print(a) for a in expr.args)
        return rf"{s} \odot \left({g} - \mathbf{{1}}\mathbf{{1}}^{{T}}({s} \odot {g})\right)"

    def _print_LogSoftmaxVJP(self, expr):
        lp, g = (self._print(a) for a in expr.args)
        return rf"{g} - e^{{{lp}}} \odot \mathbf{{1}}\mathbf{{1}}^{{T}} {g}"

    def _print_Total(self, expr):
        inner = expr.matrix
        names = [self._print(o) for o in inner.operands]
        return rf"\sum \left({_print_body(self, inner, names)}\right)"


_TEXT = TextPrinter()
_LATEX = LaTeXPrinter()


def text(expr: sp.Basic) -> str:
    """Unicode text of an expression of the equation language (minus signs as −)."""
    return _TEXT.doprint(expr).replace("-", "−")


def latex(expr: sp.Basic) -> str:
    """LaTeX of an expression of the equation language."""
    return _LATEX.doprint(expr)


__all__ = ["text", "latex", "display_name", "SoftmaxVJP", "LogSoftmaxVJP"]
