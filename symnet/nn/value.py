"""Symbolic values: what ``forward`` computes with while a model is traced.

A `Value` stands for a named matrix of the trace, samples as columns (``features × N``, as
in the seed) or a parameter (``rows × cols``; a vector parameter is a column).  Every
operation on values appends one equation to the trace and returns the value it defines:

- linear algebra stays SymPy's own matrix algebra — ``@`` is a product, ``+``/``-`` and a
  scalar factor a linear combination, ``sum`` a product with the ones vector — so its
  derivative comes from SymPy's matrix calculus;
- everything entry-wise (``*``, ``/``, ``**``, ``exp``, activations, any
  ``sn.elementwise(expr, a, b)``) is one `codegen.expr.Elementwise`, differentiated by
  ``sympy.diff``.

Broadcasting is written out: a column ``b`` (d × 1) meets a batch as ``b·1ᵀ`` and a row
``r`` (1 × N, a statistic of each sample) as ``1·r``.

Images are values too: ``features`` is a per-sample shape (``(C, H, W)``), and the matrix
behind a value is its flattening, ``C·H·W × N``; entry-wise work and sums do not care, and
the ops that do (convolutions) read ``features``.

Example:
    >>> import symnet as sn
    >>> from symnet.nn.trace import Trace
    >>> t = Trace(sn.Sequential(), 3)
    >>> x = Value(t.inputs, t)
    >>> y = 2 * x + 1
    >>> [str(eq.lhs) for eq in t.forward], y.shape
    (['H1', 'H2'], (3, N))
"""

from __future__ import annotations

import numbers
from math import prod

import sympy as sp

from codegen.expr import Elementwise
from symnet.nn.trace import N, Trace


def _variables(n: int) -> tuple[sp.Symbol, ...]:
    return sp.symbols(f"_e0:{n}", real=True)


class Value:
    """A symbolic matrix inside a traced ``forward``: supports ``@``, ``+ - * / **`` (with
    Python numbers on either side, and columns or rows broadcast), ``.T`` in products,
    ``sum``/``mean`` over features or samples."""

    __array_priority__ = 1000  # numpy defers to us: ``parameter * value`` stays symbolic

    def __init__(self, expr: sp.MatrixExpr, trace: Trace, features: tuple | None = None):
        self.expr = expr
        self.trace = trace
        rows = expr.shape[0]
        self.features = tuple(features) if features is not None else (rows,)
        if prod(self.features) != rows:
            raise ValueError(f"features {self.features} do not flatten to {rows} rows")

    @property
    def shape(self) -> tuple:
        """The matrix's shape: ``(features, N)`` for a batch, ``(rows, cols)`` for a
        parameter."""
        return tuple(self.expr.shape)

    def __repr__(self) -> str:
        return f"Value({self.expr}, shape={self.shape})"

    # --- construction ----------------------------------------------------------------------
    def _new(self, base: str, rhs: sp.MatrixExpr, numbered: bool = True) -> Value:
        """A value for ``rhs``; one of as many rows keeps this value's per-sample shape."""
        features = self.features if rhs.shape[0] == self.expr.shape[0] else None
        return Value(self.trace.emit(base, rhs, numbered), self.trace, features)

    def _value(self, other) -> Value | None:
        """``other`` as a value of this trace (a parameter becomes its symbol); None for a
        Python number."""
        from symnet.nn.parameter import Parameter, Transposed  # noqa: PLC0415 - no cycle

        if isinstance(other, Transposed):
            return Value(self._value(other.parameter).expr.T, self.trace)
        if isinstance(other, Value):
            if other.trace is not self.trace:
                raise ValueError("values from two different traces cannot be combined")
            return other
        if isinstance(other, Parameter):
            owner = other._owner[1] if other._owner else "p"
            return Value(self.trace.parameter(other, owner), self.trace)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return None
        raise TypeError(f"{self.trace.where()}: symbolic values do not support "
                        f"{type(other).__name__} operands (use Values, Parameters or numbers)")

    # --- linear algebra --------------------------------------------------------------------
    def __matmul__(self, other) -> Value:
        return _matmul(self, self._checked(other))

    def __rmatmul__(self, other) -> Value:
        return _matmul(self._checked(other), self)

    def _checked(self, other) -> Value:
        value = self._value(other)
        if value is None:
            raise TypeError(f"{self.trace.where()}: @ needs two matrices; scale by a number "
                            "with *")
        return value

    @property
    def T(self) -> Value:  # noqa: N802 - the transpose, as numpy and torch spell it
        """The transpose, usable as a factor of a product (``A.T @ B``)."""
        return Value(self.expr.T, self.trace)

    def __add__(self, other) -> Value:
        return _combine(self, other, 1)

    def __radd__(self, other) -> Value:
        return _combine(self, other, 1)

    def __sub__(self, other) -> Value:
        return _combine(self, other, -1)

    def __rsub__(self, other) -> Value:
        b = self._value(other)
        if b is None:
            c = _number(other, "subtracting from")
            return elementwise(lambda x: c - x, self)
        return _combine(b, self, -1)

    def __neg__(self) -> Value:
        return self._new("H", sp.MatMul(-1, self._plain(), evaluate=False))

    # --- entry-wise --------------------------------------------------------------------------
    def __mul__(self, other) -> Value:
        if self._value(other) is None:  # a number: a linear combination
            return self._new("H", sp.MatMul(sp.nsimplify(other, rational=False),
                                            self._plain(), evaluate=False))
        return elementwise(lambda a, b: a * b, self, other)

    def __rmul__(self, other) -> Value:
        return self.__mul__(other)

    def __truediv__(self, other) -> Value:
        if self._value(other) is None:
            return self.__mul__(1 / _number(other, "division by"))
        return elementwise(lambda a, b: a / b, self, other)

    def __rtruediv__(self, other) -> Value:
        return elementwise(lambda a, b: a / b, other, self)

    def __pow__(self, other) -> Value:
        return elementwise(lambda a, b: a**b, self, other)

    def __rpow__(self, other) -> Value:
        return elementwise(lambda a, b: a**b, other, self)

    # --- reductions ------------------------------------------------------------------------
    def sum(self, over: str = "features", base: str = "s") -> Value:
        """The sum over ``"features"`` (a row: one total per sample) or ``"samples"`` (a
        column: one total per feature)."""
        return self._reduce(over, 1, base)

    def mean(self, over: str = "features", base: str = "mu") -> Value:
        """The mean over ``"features"`` or ``"samples"``."""
        rows, cols = self.shape
        return self._reduce(over, 1 / sp.Integer(rows) if over == "features" else 1 / cols,
                            base)

    def _reduce(self, over: str, scale: sp.Expr, base: str) -> Value:
        rows, cols = self.shape
        plain = self._plain()
        if over == "features":
            factors = (sp.OneMatrix(1, rows), plain)
        elif over == "samples":
            factors = (plain, sp.OneMatrix(cols, 1))
        else:
            raise ValueError(f"{self.trace.where()}: over must be 'features' or 'samples', "
                             f"got {over!r}")
        scaled = factors if scale == 1 else (scale, *factors)
        return self._new(base, sp.MatMul(*scaled, evaluate=False))

    def _plain(self) -> sp.MatrixExpr:
        """The matrix itself, for an operation that needs it untransposed."""
        if isinstance(self.expr, sp.Transpose):
            raise TypeError(f"{self.trace.where()}: a transpose (.T) can only be a factor of "
                            "a matrix product (A.T @ B)")
        return self.expr


def _number(x, what: str) -> sp.Expr:
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        raise TypeError(f"{what} {type(x).__name__} is not supported")
    return sp.nsimplify(x, rational=False) if not isinstance(x, numbers.Integral) else \
        sp.Integer(x)


def _matmul(a: Value, b: Value) -> Value:
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{a.trace.where()}: cannot multiply {a.shape} by {b.shape} "
                         f"(a @ b needs a's columns to equal b's rows)")
    if a.expr.shape[1] == N and b.expr.shape[0] == N:
        raise ValueError(f"{a.trace.where()}: a product over the samples (…×N @ N×…) mixes "
                         "the batch; sum over samples with .sum('samples') instead")
    return a._new("H", sp.MatMul(a.expr, b.expr, evaluate=False))


def broadcast(values: list[Value]) -> tuple[tuple, list[sp.MatrixExpr]]:
    """The common shape of ``values`` and each one as an operand of that shape: a column
    ``b`` of a batch as ``b·1ᵀ``, a row ``r`` as ``1·r``."""
    rows = max(v.shape[0] for v in values)
    cols = max((v.shape[1] for v in values), key=lambda c: c == N or (c != 1 and c))
    operands = []
    for v in values:
        m = v._plain()
        r, c = m.shape
        if (r, c) == (rows, cols):
            operands.append(m)
        elif (r, c) == (rows, 1):
            operands.append(sp.MatMul(m, sp.OneMatrix(1, cols), evaluate=False))
        elif (r, c) == (1, cols):
            operands.append(sp.MatMul(sp.OneMatrix(rows, 1), m, evaluate=False))
        else:
            shapes = ", ".join(str(w.shape) for w in values)
            raise ValueError(f"{v.trace.where()}: shapes {shapes} do not broadcast (a column "
                             f"(rows, 1) or a row (1, N) broadcasts to (rows, N))")
    return (rows, cols), operands


def subtract(a: Value, b, name: str = "H") -> Value:
    """``a − b`` (broadcast) as an equation named ``name`` (numbered): ``xc1 = Z1 − 1·mu1``."""
    return _combine(a, b, -1, name)


def _combine(a: Value, other, sign: int, name: str = "H") -> Value:
    """``a + sign·other``: a linear combination of matrices, or entry-wise with a number."""
    b = a._value(other)
    if b is None:
        c = _number(other, "adding")
        return elementwise(lambda x: x + sign * c, a)
    _, (x, y) = broadcast([a, b])
    if sign < 0:
        y = sp.MatMul(-1, *(y.args if isinstance(y, sp.MatMul) else (y,)), evaluate=False)
    return a._new(name, sp.MatAdd(x, y, evaluate=False))


def elementwise(fn, *operands, label: str = "", name: str = "H",
                numbered: bool = True) -> Value:
    """``fn`` (of scalar entries) applied entry by entry to values and numbers.

    Example:
        >>> import symnet as sn
        >>> from symnet.nn.trace import Trace
        >>> t = Trace(sn.Sequential(), 2); x = Value(t.inputs, t)
        >>> str(elementwise(lambda a: a**2, x).trace.forward[-1].rhs.body.expr)
        '_e0**2'
    """
    anchor = next((o for o in operands if isinstance(o, Value)), None)
    if anchor is None:
        raise TypeError("elementwise needs at least one symbolic value")
    values = [anchor._value(o) for o in operands]
    matrices = [v for v in values if v is not None]
    _, broadcast_operands = broadcast(matrices)
    variables = _variables(len(matrices))
    it = iter(variables)
    scalars = [next(it) if v is not None else _number(o, "operand")
               for o, v in zip(operands, values)]
    body = sp.sympify(fn(*scalars))
    if not body.free_symbols & set(variables):
        raise ValueError(f"{anchor.trace.where()}: the entry-wise formula {body} does not "
                         "depend on its operands")
    rhs = Elementwise(sp.Lambda(variables, body), *broadcast_operands, label=label)
    return anchor._new(name, rhs, numbered)
