"""Losses: an elementwise formula ℓ(prediction, target) summed and scaled by the reduction.

CrossEntropyLoss adds the softmax link (PyTorch's LogSoftmax + NLLLoss); BCEWithLogitsLoss
writes ℓ on the logits in its stable form.  Adding a loss is one class here.

Example:
    >>> import sympy as sp, symnet as sn
    >>> p, t = sp.symbols("p t")
    >>> huberish = sn.Loss("logcosh", sp.log(sp.cosh(p - t)), p, t)
    >>> huberish.reduction
    'mean'
"""

from __future__ import annotations

import sympy as sp

from symnet.nn.activations import check_closed_form, check_label, check_name
from symnet.nn.devices import backend

p, y = sp.symbols("p y", real=True)
REDUCTIONS = ("mean", "sum")


class Loss:
    """A user's elementwise loss ℓ(pred, target) from a SymPy expression in two symbols.

    ``reduction='mean'`` divides by the number of entries, as PyTorch's elementwise losses.

    Example:
        >>> import sympy as sp, symnet as sn
        >>> a, b = sp.symbols("a b")
        >>> sn.Loss("l1ish", (a - b)**4, a, b, reduction="sum").reduction
        'sum'
    """

    #: 'dense': targets have the prediction's shape; 'index': class indices (N,).
    target_kind = "dense"
    #: how the model's output becomes the prediction Ŷ: None, 'softmax' or 'sigmoid'.
    link: str | None = None
    #: ℓ reads the model's output (logits) rather than Ŷ: the stable form of a fused loss.
    on_logits = False
    #: the mean divides by the batch size only (class-index losses) or by every entry.
    mean_over_samples_only = False
    #: the interval the prediction must stay in for ℓ to be finite (BCE's log ŷ, log(1 − ŷ))
    prediction_range: tuple[float, float] | None = None

    def __init__(self, name: str, expr: sp.Expr, pred: sp.Symbol, target: sp.Symbol,
                 reduction: str = "mean", label: str | None = None):
        self.name = check_name(name, "loss")
        what = f"loss {name!r}"
        for role, s in (("pred", pred), ("target", target)):
            if not isinstance(s, sp.Symbol):
                raise TypeError(f"{what}: {role} must be a sympy.Symbol, got {s!r}")
        if pred == target:
            raise ValueError(f"{what}: pred and target must be different symbols")
        expr = sp.sympify(expr)
        if not isinstance(expr, sp.Expr) or getattr(expr, "is_Matrix", False):
            raise TypeError(f"{what}: expression must be a scalar SymPy expression")
        extra = expr.free_symbols - {pred, target}
        if extra:
            names = ", ".join(sorted(s.name for s in extra))
            raise ValueError(f"{what}: expression has free symbols {names} besides "
                             f"{pred.name} and {target.name}")
        if pred not in expr.free_symbols:
            raise ValueError(f"{what}: expression does not depend on the prediction {pred.name}")
        check_closed_form(expr, pred, what)
        if reduction not in REDUCTIONS:
            raise ValueError(f"{what}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.expr = expr.xreplace({pred: p, target: y})
        self.reduction = reduction
        self.label = check_label(label, name, what)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def __call__(self, output, target):
        """The loss of ``model(X)``'s output: a value whose ``backward()`` fills ``p.grad``
        (the CPU backend's gradient kernels, whatever the model's device)."""
        return backend("cpu").loss(self, output, target)


def _builtin(name: str, expr: sp.Expr, doc: str, **attrs):
    def __init__(self, reduction: str = "mean"):
        Loss.__init__(self, name, expr, p, y, reduction)

    return type(name, (Loss,), {"__init__": __init__, "__doc__": doc, **attrs})


MSELoss = _builtin("MSELoss", (p - y) ** 2, "Mean squared error, ℓ = (ŷ − y)².")
BCELoss = _builtin(
    "BCELoss", -(y * sp.log(p) + (1 - y) * sp.log(1 - p)),
    "Binary cross-entropy on probabilities, ℓ = −(y·log ŷ + (1 − y)·log(1 − ŷ)).",
    prediction_range=(0.0, 1.0),
)
BCEWithLogitsLoss = _builtin(
    "BCEWithLogitsLoss", sp.log(1 + sp.exp(p)) - y * p,
    "Binary cross-entropy on logits z: ℓ = log(1 + eᶻ) − y·z = BCE(σ(z), y).",
    link="sigmoid", on_logits=True,
)
NLLLoss = _builtin(
    "NLLLoss", -y * p, "Negative log-likelihood on log-probabilities; targets are class indices.",
    target_kind="index", mean_over_samples_only=True,
)
CrossEntropyLoss = _builtin(
    "CrossEntropyLoss", -y * sp.log(p),
    "Softmax then −Σ y·log ŷ (PyTorch's LogSoftmax + NLLLoss); targets are class indices.",
    target_kind="index", link="softmax", mean_over_samples_only=True,
)
