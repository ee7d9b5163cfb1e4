"""The equation language: SymPy matrix expressions that symnet writes and codegen lowers.

Standard SymPy covers products, transposes, sums and the ones vector (``W*X``, ``dZ*A.T``,
``b*OneMatrix(1, N)``, ``dZ*OneMatrix(N, 1)``).  The classes here add the few operations
SymPy has no node for.  Each one knows its shape and its meaning on explicit matrices
(``evaluate``), which is what verification expands to scalars, and how it prints through
SymPy's own printers (``str``, ``sympy.pretty``, ``sympy.latex``) as its formula, with the
operands' names; lowering dispatches on the class.

Example:
    >>> import sympy as sp
    >>> z = sp.Symbol("z")
    >>> Z = sp.MatrixSymbol("Z1", 2, 3)
    >>> A = Elementwise(sp.Lambda(z, sp.tanh(z)), Z, label="tanh")
    >>> A.shape
    (2, 3)
    >>> print(A, sp.latex(A))
    tanh(Z1) \\tanh\\left(Z_{1}\\right)
"""

from __future__ import annotations

from functools import singledispatch

import sympy as sp
from sympy.core.symbol import Str
from sympy.printing.latex import accepted_latex_functions, greek_letters_set, tex_greek_dictionary
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.pretty.pretty_symbology import greek_unicode
from sympy.printing.pretty.stringpict import prettyForm

# Math-mode LaTeX for the characters TeX reads as markup, so that a label prints as itself:
# ``\input{f}`` in one is the text \input{f}, not a command.
LATEX_ESCAPES = str.maketrans({"\\": r"\backslash{}", "{": r"\{", "}": r"\}", "$": r"\$",
                               "&": r"\&", "#": r"\#", "%": r"\%", "_": r"\_", "^": r"\hat{}",
                               "~": r"\sim{}", " ": r"\ "})
GREEK_WORDS = {letter: word for word, letter in greek_unicode.items()}  # σ → sigma
#: ``colsum(M)``, in a printed column operation: each column's sum, repeated down the column
#: (``1·1ᵀ·M``)
COLSUM = sp.Function("colsum")


def visible(label: str) -> str:
    """``label`` with control characters written as escapes: ``"a\\nb"`` → ``a\\nb``, so free
    text cannot break a line of printed output."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                   for c in label)


def latex_function(label: str) -> str:
    """A function's name in LaTeX: ``tanh`` → ``\\tanh``, ``σ`` → ``\\sigma``, any other label
    ``\\operatorname{…}`` with TeX's markup characters escaped."""
    word = GREEK_WORDS.get(label, label)
    if word in accepted_latex_functions or word in greek_letters_set:
        return "\\" + word
    if word in tex_greek_dictionary:
        return tex_greek_dictionary[word]
    return rf"\operatorname{{{visible(label).translate(LATEX_ESCAPES)}}}"


class _Printed:
    """SymPy's printer hooks for a node of the equation language.

    A node says what it shows (``_shown``): a scalar SymPy expression whose stand-ins print as
    the node's operands, or ``(name, argument)`` for ``name(argument)``.  SymPy asks the node
    before the printer's own ``_print_<Class>`` methods; a printer that has one for the class
    (symnet's notation) keeps it.
    """

    def _shown(self) -> sp.Expr | tuple[str, sp.Basic]:
        raise NotImplementedError

    @property
    def precedence(self) -> int:
        """How tightly the printed form binds: a product around a printed sum parenthesises it."""
        shown = self._shown()
        return PRECEDENCE["Func"] if isinstance(shown, tuple) else precedence(shown)

    def _sympystr(self, printer) -> str:
        return _print_shown(self, printer, lambda name, arg: f"{visible(name)}({arg})")

    def _latex(self, printer) -> str:
        return _print_shown(self, printer,
                            lambda name, arg: rf"{latex_function(name)}\left({arg}\right)")

    def _pretty(self, printer) -> prettyForm:
        return _print_shown(self, printer, _pretty_call)


def _print_shown(node: _Printed, printer, call):
    own = getattr(printer, f"_print_{type(node).__name__}", None)
    if own is not None:
        return own(node)
    shown = node._shown()
    if isinstance(shown, tuple):
        name, argument = shown
        return call(name, printer._print(argument))
    return printer._print(shown)


def _pretty_call(name: str, argument: prettyForm) -> prettyForm:
    called = prettyForm(*argument.parens())
    return prettyForm(*called.left(visible(name)), binding=prettyForm.FUNC)


class _Operand(sp.Dummy):
    """A scalar standing for a matrix expression in a printed body: prints as that expression,
    parenthesised unless it is atomic (``(b1*1)`` for ``b1·1ᵀ``)."""

    def __new__(cls, operand: sp.MatrixExpr, **assumptions):
        stand_in = super().__new__(cls, "operand", **assumptions)
        stand_in.operand = operand
        return stand_in

    def _sympystr(self, printer) -> str:
        return printer.parenthesize(self.operand, PRECEDENCE["Atom"], strict=True)

    _latex = _sympystr  # LaTeX's parenthesize writes \left( … \right)

    def _pretty(self, printer) -> prettyForm:
        shown = printer._print(self.operand)
        if precedence(self.operand) < PRECEDENCE["Atom"]:
            return prettyForm(*shown.parens())
        return shown


def stand_in(operand: sp.MatrixExpr, variable: sp.Symbol | None = None) -> sp.Expr:
    """A scalar that prints as ``operand``: a named matrix's name as a symbol (with
    ``variable``'s assumptions, so a body rebuilds as it was built), else an ``_Operand``."""
    assumptions = variable.assumptions0 if variable is not None else {}
    operand = broadcast_base(operand)  # b·1ᵀ reads as b, as the textbook writes it
    if isinstance(operand, sp.MatrixSymbol):
        return sp.Symbol(operand.name, **assumptions)
    return _Operand(operand, **assumptions)


class Elementwise(_Printed, sp.MatrixExpr):
    """``body`` applied entry by entry to equally shaped operands.

    ``body`` is a ``Lambda`` with one variable per operand; any other free symbol in it is
    a scalar (a learning rate, the batch size).  ``label`` names the function of one operand
    for printing (``σ(Z1)``); otherwise the body prints with the operands in its variables'
    places.

    Example:
        >>> a, g = sp.symbols("a g", real=True)
        >>> A, G = sp.MatrixSymbol("A1", 3, 2), sp.MatrixSymbol("dA1", 3, 2)
        >>> print(Elementwise(sp.Lambda((g, a), g * (1 - a**2)), G, A))
        dA1*(1 - A1**2)
    """

    def __new__(cls, body: sp.Lambda, *operands: sp.MatrixExpr, label: str = ""):
        if operands and isinstance(operands[0], Str):  # rebuilt from .args
            label, operands = operands[0].name, operands[1:]
        if len(body.variables) != len(operands):
            raise ValueError(f"body takes {len(body.variables)} operands, got {len(operands)}")
        return sp.Basic.__new__(cls, body, Str(label), *operands)

    @property
    def body(self) -> sp.Lambda:
        return self.args[0]

    @property
    def label(self) -> str:
        return self.args[1].name

    @property
    def operands(self) -> tuple[sp.MatrixExpr, ...]:
        return self.args[2:]

    @property
    def shape(self):
        return self.operands[0].shape

    def evaluate(self, *operands: sp.Matrix) -> sp.Matrix:
        rows, cols = operands[0].shape
        return sp.Matrix(rows, cols, lambda i, j: self.body(*(m[i, j] for m in operands)))

    def _shown(self):
        if self.label and len(self.operands) == 1:
            return self.label, self.operands[0]
        return self.body(*map(stand_in, self.operands, self.body.variables))


def broadcast_base(operand: sp.MatrixExpr) -> sp.MatrixExpr:
    """The matrix a broadcast operand repeats: ``b`` for ``b·1ᵀ`` (a column along every
    column) and ``r`` for ``1·r`` (a row down every row); any other operand itself.

    Example:
        >>> b = sp.MatrixSymbol("b", 3, 1)
        >>> broadcast_base(b * sp.OneMatrix(1, 4))
        b
    """
    if isinstance(operand, sp.MatMul) and len(operand.args) == 2:
        first, second = operand.args
        if isinstance(second, sp.OneMatrix) and second.shape[0] == 1 and \
                not isinstance(first, sp.OneMatrix):
            return first
        if isinstance(first, sp.OneMatrix) and first.shape[1] == 1 and \
                not isinstance(second, sp.OneMatrix):
            return second
    return operand


class _ColumnOp(_Printed, sp.MatrixExpr):
    """An operation on each column (sample) of its operands, keeping the shape.

    Subclasses define ``entry(j, *columns, total)``: entry ``j`` of the result, where each
    column is a function from a row index to a scalar and ``total(f)`` sums ``f`` over the
    rows.  The same formula then expands explicit matrices (verification), indexed symbols
    of any height (the derivation's simplifications) and the printed form, ``colsum`` for
    ``total``: ``S*(G - colsum(G*S))``.  A subclass with a ``label`` prints as ``label(Z)``.
    """

    label = ""

    def __new__(cls, *operands: sp.MatrixExpr):
        return sp.Basic.__new__(cls, *operands)

    @property
    def shape(self):
        return self.args[0].shape

    def evaluate(self, *operands: sp.Matrix) -> sp.Matrix:
        rows, cols = operands[0].shape

        def column(j):
            getters = [(lambda i, m=m: m[i, j]) for m in operands]
            return [self.entry(i, *getters, total=lambda f: sp.Add(*(f(k) for k in range(rows))))
                    for i in range(rows)]

        return sp.Matrix(rows, cols, lambda i, j: column(j)[i]) if rows * cols else sp.zeros(0)

    def _shown(self):
        if self.label:
            return self.label, self.args[0]
        columns = [(lambda i, s=s: s) for s in map(stand_in, self.args)]  # the same on every row
        return self.entry(0, *columns, total=lambda f: COLSUM(f(0)))


class Softmax(_ColumnOp):
    """Column-wise softmax: ``exp(z_i) / Σ_k exp(z_k)``."""

    label = "softmax"

    @staticmethod
    def entry(i, z, total):
        return sp.exp(z(i)) / total(lambda k: sp.exp(z(k)))


class LogSoftmax(_ColumnOp):
    """Column-wise log-softmax: ``z_i − log Σ_k exp(z_k)``."""

    label = "log_softmax"

    @staticmethod
    def entry(i, z, total):
        return z(i) - sp.log(total(lambda k: sp.exp(z(k))))


class SoftmaxVJP(_ColumnOp):
    """``S ⊙ (G − 1·(1ᵀ(S ⊙ G)))``: the gradient through ``S = softmax(Z)`` given ``G = dS``."""

    @staticmethod
    def entry(i, s, g, total):
        return s(i) * (g(i) - total(lambda k: s(k) * g(k)))


class LogSoftmaxVJP(_ColumnOp):
    """``G − exp(L) ⊙ 1·(1ᵀG)``: the gradient through ``L = log_softmax(Z)`` given ``G = dL``."""

    @staticmethod
    def entry(i, logp, g, total):
        return g(i) - sp.exp(logp(i)) * total(g)


class Total(_Printed, sp.Expr):
    """The sum of every entry of a matrix, ``1ᵀ·M·1``: a matrix reduced to a scalar; prints
    as ``sum(M)``."""

    def __new__(cls, matrix: sp.MatrixExpr):
        return sp.Expr.__new__(cls, matrix)

    @property
    def matrix(self) -> sp.MatrixExpr:
        return self.args[0]

    def evaluate(self, matrix: sp.Matrix) -> sp.Expr:
        return sp.Add(*matrix)

    def _shown(self):
        return "sum", self.matrix


@singledispatch
def evaluate(expr: sp.Basic, env: dict[str, sp.Matrix]) -> sp.Basic:
    """Expand ``expr`` to an explicit matrix (or scalar), given explicit values by name.

    Example:
        >>> W = sp.MatrixSymbol("W", 1, 2); X = sp.MatrixSymbol("X", 2, 1)
        >>> evaluate(W * X, {"W": sp.Matrix([[1, 2]]), "X": sp.Matrix([3, 4])})
        Matrix([[11]])
    """
    if isinstance(expr, sp.Expr) and not expr.is_Matrix:  # a scalar: expand its totals
        return expr.xreplace({t: evaluate(t, env) for t in expr.atoms(Total)})
    raise TypeError(f"cannot evaluate {type(expr).__name__}: {expr}")


@evaluate.register
def _(expr: sp.MatrixSymbol, env):
    return env[expr.name]


@evaluate.register
def _(expr: sp.OneMatrix, env):
    return sp.ones(*expr.shape)


@evaluate.register
def _(expr: Elementwise, env):
    return expr.evaluate(*(evaluate(op, env) for op in expr.operands))


@evaluate.register(_ColumnOp)
@evaluate.register(Total)
def _(expr, env):
    return expr.evaluate(*(evaluate(op, env) for op in expr.args))


@evaluate.register
def _(expr: sp.Transpose, env):
    return evaluate(expr.arg, env).T


@evaluate.register
def _(expr: sp.MatMul, env):
    result = sp.Mul(*(a for a in expr.args if not getattr(a, "is_Matrix", False)))
    for factor in (a for a in expr.args if getattr(a, "is_Matrix", False)):
        result = result * evaluate(factor, env)
    return result


@evaluate.register
def _(expr: sp.MatAdd, env):
    terms = [evaluate(a, env) for a in expr.args]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
