"""Normalisation layers, declared as formulas on symbolic values (no hand-written backward).

Each statistic is its own named equation, so the derived backward is the textbook's step by
step: ``dxhat``, ``drstd``, ``dvar``, ``dxc``, ``dmu``, each line short.

Example:
    >>> import symnet as sn
    >>> d = sn.derive(sn.Sequential(sn.Linear(3, 4), sn.LayerNorm(4)), sn.MSELoss())
    >>> [str(eq.lhs) for eq in d.forward][:6]
    ['Z1', 'mu1', 'xc1', 'sq1', 'var1', 'rstd1']
"""

from __future__ import annotations

import numbers

import numpy as np
import sympy as sp

from codegen.expr import Elementwise
from symnet.nn.module import Module
from symnet.nn.parameter import Parameter, check_dtype
from symnet.nn.value import Value, elementwise, subtract


def _width(shape, layer: str) -> int:
    dims = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if len(dims) != 1 or isinstance(dims[0], bool) or not isinstance(dims[0], numbers.Integral) \
            or dims[0] < 1:
        raise ValueError(f"{layer}: normalized_shape must be one positive integer (the "
                         f"features of a sample), got {shape!r}")
    return int(dims[0])


def _eps(eps, layer: str) -> float:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0 or \
            not np.isfinite(eps):
        raise ValueError(f"{layer}: eps must be a positive number, got {eps!r}")
    return float(eps)


def _check(x: Value, width: int, layer: Module) -> None:
    if x.shape[0] != width:
        raise ValueError(f"{layer!r} ({x.trace.where()}) receives {x.shape[0]} features, "
                         f"expected {width}")


def _scaled(layer: Module, x: Value, xhat: Value, name: str) -> Value:
    """``weight ⊙ x̂ + bias`` (each a column broadcast over the samples), or ``x̂``."""
    weight, bias = layer._parameters.get("weight"), layer._parameters.get("bias")
    if weight is None:
        return xhat
    t = x.trace
    k = xhat.expr.name[len("xhat"):]  # the statistics' number: γ_1 and β_1 beside xhat1
    w = Value(t.parameter(weight, f"gamma_{k}"), t)
    if bias is None:
        return elementwise(lambda g, a: g * a, w, xhat, name=name)
    b = Value(t.parameter(bias, f"beta_{k}"), t)
    return elementwise(lambda g, a, c: g * a + c, w, xhat, b, name=name)


def _normalise(x: Value, eps: float, centre: bool) -> Value:
    """``x̂ = (x − μ)/√(σ² + ε)`` over each sample's features (without μ: ``x/√(x̄² + ε)``)."""
    xc = x
    if centre:
        xc = subtract(x, x.mean("features", base="mu"), name="xc")
    var = elementwise(lambda a: a**2, xc, name="sq").mean("features",
                                                          base="var" if centre else "ms")
    return _scaled_by_rstd(xc, var, eps)


def _scaled_by_rstd(xc: Value, var: Value, eps: float) -> Value:
    """``x̂ = xc ⊙ rstd`` with ``rstd = 1/√(var + ε)``, each its own equation."""
    e = sp.Float(eps)
    rstd = elementwise(lambda v: 1 / sp.sqrt(v + e), var, name="rstd")
    return elementwise(lambda a, r: a * r, xc, rstd, name="xhat")


class LayerNorm(Module):
    """``y = (x − E[x]) / √(Var[x] + ε) ⊙ γ + β`` over each sample's features, as PyTorch's
    ``nn.LayerNorm(d)`` (biased variance; ``weight`` γ = 1 and ``bias`` β = 0 at first).

    Example:
        >>> import symnet as sn
        >>> [k for k in sn.LayerNorm(4).state_dict()]
        ['weight', 'bias']
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features = _width(normalized_shape, "LayerNorm")
        self.normalized_shape = (self.in_features,)
        self.eps = _eps(eps, "LayerNorm")
        self.elementwise_affine = bool(elementwise_affine)
        dtype = check_dtype(dtype)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.in_features, dtype))
            if bias:
                self.bias = Parameter(np.zeros(self.in_features, dtype))

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, "
                f"bias={'bias' in self._parameters}")

    def __repr__(self) -> str:
        return f"LayerNorm({self.extra_repr()})"

    def forward(self, x: Value) -> Value:
        _check(x, self.in_features, self)
        xhat = _normalise(x, self.eps, centre=True)
        return _scaled(self, x, xhat, "ln")


class RMSNorm(Module):
    """``y = x / √(mean(x²) + ε) ⊙ γ`` over each sample's features, as PyTorch's
    ``nn.RMSNorm(d)`` (``eps=None``: the dtype's machine epsilon, as torch does).

    Example:
        >>> import symnet as sn
        >>> [k for k in sn.RMSNorm(4).state_dict()]
        ['weight']
    """

    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features = _width(normalized_shape, "RMSNorm")
        self.normalized_shape = (self.in_features,)
        self.eps = None if eps is None else _eps(eps, "RMSNorm")
        self.elementwise_affine = bool(elementwise_affine)
        self._dtype = check_dtype(dtype)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.in_features, self._dtype))

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def __repr__(self) -> str:
        return f"RMSNorm({self.extra_repr()})"

    def forward(self, x: Value) -> Value:
        _check(x, self.in_features, self)
        dtype = self.weight.dtype if self.elementwise_affine else self._dtype
        eps = self.eps if self.eps is not None else float(np.finfo(dtype).eps)
        xhat = _normalise(x, eps, centre=False)
        return _scaled(self, x, xhat, "rms")


class BatchNorm1d(Module):
    """``y = (x − E[x]) / √(Var[x] + ε) ⊙ γ + β`` over the batch, per feature, as PyTorch's
    ``nn.BatchNorm1d(d)`` on (N, d) input.

    Training: the batch's mean and biased variance normalise, and the running statistics
    follow ``r ← (1 − momentum)·r + momentum·s`` (the variance unbiased, ``N/(N − 1)``);
    ``num_batches_tracked`` counts the calls.  Eval: the running statistics normalise.
    Without ``track_running_stats`` the batch statistics are used in both modes.

    Example:
        >>> import symnet as sn
        >>> list(sn.BatchNorm1d(3).state_dict())
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features = self.num_features = _width(num_features, "BatchNorm1d")
        self.eps = _eps(eps, "BatchNorm1d")
        if momentum is None or not isinstance(momentum, numbers.Real) or \
                isinstance(momentum, bool) or not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm1d: momentum must be a number in [0, 1], got "
                             f"{momentum!r} (None, PyTorch's cumulative average, is not "
                             "supported)")
        self.momentum = float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dtype = check_dtype(dtype)
        d = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(d, dtype))
            self.bias = Parameter(np.zeros(d, dtype))
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(d, dtype))
            self.register_buffer("running_var", np.ones(d, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def __repr__(self) -> str:
        return f"BatchNorm1d({self.extra_repr()})"

    def forward(self, x: Value) -> Value:
        _check(x, self.num_features, self)
        t = x.trace
        if self.track_running_stats and not self.training:
            mean = Value(t.buffer(self, "running_mean", "running_mean"), t)
            var = Value(t.buffer(self, "running_var", "running_var"), t)
            xhat = _scaled_by_rstd(subtract(x, mean, name="xc"), var, self.eps)
            return _scaled(self, x, xhat, "bn")
        mu = x.mean("samples", base="mu")
        xc = subtract(x, mu, name="xc")
        var = elementwise(lambda a: a**2, xc, name="sq").mean("samples", base="var")
        xhat = _scaled_by_rstd(xc, var, self.eps)
        if self.track_running_stats:
            self._follow(t, mu, var)
        return _scaled(self, x, xhat, "bn")

    def _follow(self, t, mu: Value, var: Value) -> None:
        """The running statistics' updates (after the step's finite check)."""
        m = sp.nsimplify(self.momentum, rational=True)
        N = t.inputs.shape[1]  # noqa: N806 - the batch size, as the equations name it
        for name, stat, factor in (("running_mean", mu, 1), ("running_var", var, N / (N - 1))):
            buffer = t.buffer(self, name, name)
            a, b = sp.symbols("_e0 _e1", real=True)
            body = sp.Lambda((a, b), (1 - m) * a + m * factor * b)
            t.update(buffer, Elementwise(body, buffer, stat.expr))
        t.counted.append(self)
        t.min_batch = 2
