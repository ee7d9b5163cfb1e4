"""Activations: each is a SymPy expression in one variable, applied entry by entry.

Adding an activation is one line in this file: a name, a label for printing and a formula.
Its derivative is never written here: `symnet.derive` asks SymPy for it.

Example:
    >>> import sympy as sp, symnet as sn
    >>> x = sp.Symbol("x")
    >>> mish = sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)
    >>> [str(s) for s in mish.expr.free_symbols]  # the canonical real variable
    ['x']
"""

from __future__ import annotations

import keyword

import sympy as sp

from codegen.expr import LogSoftmax as LogSoftmax_
from codegen.expr import Softmax as Softmax_
from codegen.printer import kernel_code
from symnet.nn.module import Module
from symnet.nn.value import Value, elementwise

x = sp.Symbol("x", real=True)


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} name {name!r} is not a valid Python identifier")
    return name


def check_label(label: str | None, name: str, what: str) -> str:
    """A label is free text for printing: any printable characters (each printer escapes
    what is markup in its format), but no newline or other control character, which would
    forge lines of printed output.  None or empty means the name."""
    if label is None or label == "":
        return name
    if not isinstance(label, str):
        raise TypeError(f"{what}: label must be a str, got {type(label).__name__}")
    if not label.isprintable():
        raise ValueError(f"{what}: label {label!r} must be printable text, without newlines "
                         f"or other control characters")
    return label


def _check_elementwise(expr: sp.Expr, var: sp.Symbol, what: str) -> sp.Expr:
    expr = sp.sympify(expr)
    if not isinstance(var, sp.Symbol):
        raise TypeError(f"{what}: the variable must be a sympy.Symbol, got {var!r}")
    if getattr(expr, "is_Matrix", False) or not isinstance(expr, sp.Expr):
        raise TypeError(f"{what}: expression must be a scalar SymPy expression, got {expr!r}")
    extra = expr.free_symbols - {var}
    if extra:
        names = ", ".join(sorted(s.name for s in extra))
        raise ValueError(f"{what}: expression has free symbols {names} besides {var.name}")
    if var not in expr.free_symbols:
        raise ValueError(f"{what}: expression does not depend on {var.name}")
    check_closed_form(expr, var, what)
    return expr


def check_closed_form(expr: sp.Expr, var: sp.Symbol, what: str) -> None:
    """No bound symbols (a Sum or Integral is not elementwise code), a derivative SymPy can
    write down, and both printable as kernel code: errors at declaration, not at compile."""
    bound = expr.atoms(sp.Symbol) - expr.free_symbols
    if bound:
        names = ", ".join(sorted(s.name for s in bound))
        raise ValueError(f"{what}: expression binds {names} (a Sum, Integral or similar); "
                         f"it must be a closed-form function of {var.name}")
    derivative = sp.diff(expr, var)
    if derivative.has(sp.Derivative, sp.Subs):
        raise ValueError(f"{what}: SymPy cannot differentiate it with respect to {var.name}")
    for e in (expr, derivative):
        try:
            kernel_code(e)
        except NotImplementedError as error:
            first = str(error).splitlines()[0]
            raise ValueError(f"{what}: codegen cannot print it as kernel code ({first})") \
                from None


class Activation(Module):
    """An elementwise activation ``f(x)`` given as a SymPy expression in one symbol.

    Example:
        >>> import sympy as sp, symnet as sn
        >>> z = sp.Symbol("z")
        >>> sn.Activation("square", z**2, z).label
        'square'
    """

    def __init__(self, name: str, expr: sp.Expr, var: sp.Symbol, label: str | None = None):
        super().__init__()
        self.name = check_name(name, "activation")
        expr = _check_elementwise(expr, var, f"activation {name!r}")
        # One canonical real variable, so equal formulas derive and cache alike.
        self.expr = expr.xreplace({var: x})
        self.label = check_label(label, name, f"activation {name!r}")
        self.var = x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})" if type(self) is not Activation \
            else f"Activation({self.name!r}, {self.expr})"

    def forward(self, x: Value) -> Value:
        """``A{layer} = f(x)`` entry by entry."""
        return elementwise(lambda v: self.expr.xreplace({self.var: v}), x, label=self.label,
                           name=f"A{x.trace.layer}", numbered=False)


def _builtin(name: str, label: str, expr: sp.Expr, doc: str):
    def __init__(self):
        Activation.__init__(self, name, expr, x, label)

    return type(name, (Activation,), {"__init__": __init__, "__doc__": doc})


_sigmoid = 1 / (1 + sp.exp(-x))
ReLU = _builtin("ReLU", "ReLU", sp.Max(0, x), "ReLU: max(0, x).")
Sigmoid = _builtin("Sigmoid", "σ", _sigmoid, "Logistic sigmoid: 1 / (1 + exp(−x)).")
Tanh = _builtin("Tanh", "tanh", sp.tanh(x), "Hyperbolic tangent.")
SiLU = _builtin("SiLU", "SiLU", x * _sigmoid, "SiLU (swish): x·σ(x).")
GELU = _builtin("GELU", "GELU", x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
                "GELU, exact erf form (PyTorch's default).")
GELU.extra_repr = lambda self: "approximate='none'"


class LeakyReLU(Activation):
    """LeakyReLU: x for x > 0, else negative_slope·x.

    Example:
        >>> import symnet as sn
        >>> sn.LeakyReLU(0.1).negative_slope
        0.1
    """

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)
        slope = sp.nsimplify(self.negative_slope, rational=True)
        super().__init__("LeakyReLU", sp.Piecewise((x, x > 0), (slope * x, True)), x)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softplus(Activation):
    """Softplus: log(1 + exp(x)).  Kernels evaluate it as max(x, 0) + log1p(exp(−|x|)), which
    never overflows (PyTorch instead switches to x above a threshold of 20; the two agree
    to within exp(−20)).

    Example:
        >>> import symnet as sn
        >>> sn.Softplus().label
        'softplus'
    """

    def __init__(self):
        super().__init__("Softplus", sp.log(1 + sp.exp(x)), x, "softplus")


class Softmax(Module):
    """Softmax over the features of each sample (PyTorch's ``dim=1`` on (N, C) input).

    Example:
        >>> import symnet as sn
        >>> sn.Softmax()
        Softmax(dim=1)
    """

    name = "Softmax"
    label = "softmax"

    def extra_repr(self) -> str:
        return "dim=1"

    def forward(self, x: Value) -> Value:
        return Value(x.trace.emit(f"A{x.trace.layer}", Softmax_(x._plain())), x.trace)


class LogSoftmax(Module):
    """Log-softmax over the features of each sample; pair it with NLLLoss.

    Example:
        >>> import symnet as sn
        >>> sn.LogSoftmax()
        LogSoftmax(dim=1)
    """

    name = "LogSoftmax"
    label = "log_softmax"

    def extra_repr(self) -> str:
        return "dim=1"

    def forward(self, x: Value) -> Value:
        return Value(x.trace.emit(f"A{x.trace.layer}", LogSoftmax_(x._plain())), x.trace)
