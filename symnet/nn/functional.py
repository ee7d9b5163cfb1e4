"""Functions of symbolic values, for a model's own ``forward``: activations, ``exp``/``log``/
``sqrt``, softmax, sums and means, and any entry-wise SymPy formula of several operands.

Each activation is the same SymPy formula its module declares (``sn.relu(x)`` is what
``sn.ReLU()`` computes), so both derive, print and compile alike.

Example:
    >>> import sympy as sp, symnet as sn
    >>> from symnet.nn.trace import Trace
    >>> from symnet.nn.value import Value
    >>> t = Trace(sn.Sequential(), 3); x = Value(t.inputs, t)
    >>> u, v = sp.symbols("u v")
    >>> y = sn.elementwise(u * sp.tanh(v), x, sn.sigmoid(x))
    >>> [str(eq.lhs) for eq in t.forward]
    ['A0', 'H1']
"""

from __future__ import annotations

import sympy as sp

from codegen.expr import LogSoftmax, Softmax
from symnet.nn import activations
from symnet.nn.activations import check_closed_form
from symnet.nn.value import Value
from symnet.nn.value import elementwise as _elementwise


def _symbolic(x, what: str) -> Value:
    if not isinstance(x, Value):
        raise TypeError(f"sn.{what} takes a symbolic value (inside a Module's forward), got "
                        f"{type(x).__name__}; on arrays, call the model instead")
    return x


def activation(module: activations.Activation, x: Value) -> Value:
    """``module``'s formula applied to ``x`` entry by entry, named ``A{layer}``."""
    return module.forward(_symbolic(x, module.name.lower()))


def _function(cls):
    def apply(x: Value) -> Value:
        return activation(cls(), x)

    apply.__name__ = cls.__name__.lower()
    apply.__doc__ = f"``{cls.__name__}()``'s formula on a symbolic value."
    return apply


relu = _function(activations.ReLU)
sigmoid = _function(activations.Sigmoid)
tanh = _function(activations.Tanh)
gelu = _function(activations.GELU)
silu = _function(activations.SiLU)
softplus = _function(activations.Softplus)


def leaky_relu(x: Value, negative_slope: float = 0.01) -> Value:
    """``LeakyReLU(negative_slope)``'s formula on a symbolic value."""
    return activation(activations.LeakyReLU(negative_slope), x)


def exp(x: Value) -> Value:
    """``exp`` entry by entry."""
    return _elementwise(sp.exp, _symbolic(x, "exp"))


def log(x: Value) -> Value:
    """The natural logarithm entry by entry."""
    return _elementwise(sp.log, _symbolic(x, "log"))


def sqrt(x: Value) -> Value:
    """The square root entry by entry."""
    return _elementwise(sp.sqrt, _symbolic(x, "sqrt"))


def elementwise(expr, *operands, variables: tuple | None = None, label: str = "") -> Value:
    """Any SymPy formula of scalars applied entry by entry to several operands (values,
    parameters, numbers), broadcast as ``+`` does.

    ``expr``'s free symbols are its variables, matched to ``operands`` in order of name
    (``u, v`` → first, second operand) unless ``variables`` gives the order; a
    ``sympy.Lambda`` brings its own.  Its derivatives come from ``sympy.diff``.

    Example:
        >>> import sympy as sp, symnet as sn
        >>> from symnet.nn.trace import Trace
        >>> from symnet.nn.value import Value
        >>> t = Trace(sn.Sequential(), 2); x = Value(t.inputs, t)
        >>> a, b = sp.symbols("a b")
        >>> sn.elementwise(a * b + a, x, 3).shape
        (2, N)
    """
    if isinstance(expr, sp.Lambda):
        variables, expr = expr.variables, expr.expr
    expr = sp.sympify(expr)
    if variables is None:
        variables = tuple(sorted(expr.free_symbols, key=lambda s: s.name))
    variables = tuple(variables)
    if len(variables) != len(operands):
        names = ", ".join(s.name for s in variables)
        raise ValueError(f"sn.elementwise: the formula {expr} has {len(variables)} "
                         f"variable(s) ({names}) but {len(operands)} operand(s) were given")
    for v in variables:
        check_closed_form(expr, v, f"sn.elementwise({expr})")
    return _elementwise(lambda *entries: expr.xreplace(dict(zip(variables, entries))),
                        *operands, label=label)


def softmax(x: Value) -> Value:
    """Softmax over the features of each sample."""
    x = _symbolic(x, "softmax")
    return x._new("S", Softmax(x._plain()))


def log_softmax(x: Value) -> Value:
    """Log-softmax over the features of each sample."""
    x = _symbolic(x, "log_softmax")
    return x._new("S", LogSoftmax(x._plain()))


def sum(x: Value, over: str = "features") -> Value:  # noqa: A001 - torch.sum's name
    """The sum over ``"features"`` (one total per sample) or ``"samples"``."""
    return _symbolic(x, "sum").sum(over)


def mean(x: Value, over: str = "features") -> Value:
    """The mean over ``"features"`` (one mean per sample) or ``"samples"``."""
    return _symbolic(x, "mean").mean(over)
