"""SGD, Adam and AdamW with PyTorch's exact semantics, written as update equations.

Each optimizer turns ``(P, dP)`` pairs into equations: ``P ← P − η·dP`` for plain SGD;
Adam's ``m``, ``v`` and bias-corrected ``m̂``, ``v̂``.  Left sides that are parameters or
optimizer state are assignments (``←``); the others are temporaries a kernel keeps in
registers.  Hyperparameters stay symbols, so changing ``lr`` never recompiles.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import sympy as sp

from symnet.graph import ew
from symnet.module import Parameter

lr, beta1, beta2, eps, weight_decay, momentum, dampening = sp.symbols(
    "lr beta1 beta2 eps weight_decay momentum dampening", real=True)
t = sp.Symbol("t", integer=True, positive=True)


def _named(prefix: str, P: sp.MatrixSymbol) -> sp.MatrixSymbol:
    return sp.MatrixSymbol(prefix + P.name, *P.shape)


def _eq(lhs, rhs) -> sp.Eq:
    return sp.Eq(lhs, rhs, evaluate=False)


class Optimizer:
    """Base class: parameter list, hyperparameters, per-parameter state, the step count."""

    #: state buffers per parameter, by prefix (``m`` → ``mW1``), zero-initialised.
    state_prefixes: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: parameter {i} is "
                                f"{type(p).__name__}, not a symnet Parameter")
        for name, value in defaults.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be ≥ 0, got {value}")
        self.params = params
        self.defaults = dict(defaults)
        self.step_count = 0
        self.state: list[dict[str, np.ndarray]] = [
            {prefix: np.zeros_like(p.data) for prefix in self.state_prefixes} for p in params]

    # --- symbolic --------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        """Values of the scalar symbols the update equations use."""
        return {k: float(v) for k, v in self.defaults.items() if not isinstance(v, bool)}

    def updates(self, params: list[tuple[sp.MatrixSymbol, sp.MatrixSymbol, str]]) -> list[sp.Eq]:
        """Update equations for each ``(P, dP, state_key)``."""
        return [eq for P, dP, _ in params for eq in self.update(P, dP)]

    def update(self, P: sp.MatrixSymbol, dP: sp.MatrixSymbol) -> list[sp.Eq]:
        raise NotImplementedError

    def _decayed(self, P, dP) -> tuple[list[sp.Eq], sp.MatrixSymbol]:
        """``gP = dP + λ·P`` when weight decay is on (PyTorch's L2 form)."""
        if not self.defaults.get("weight_decay"):
            return [], dP
        g = _named("g", P)
        return [_eq(g, ew(lambda d, p: d + weight_decay * p, dP, P))], g

    # --- runtime ---------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget accumulated gradients (PyTorch's ``set_to_none``)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Apply one update with the compiled kernel, from each parameter's ``.grad``."""
        from symnet.runtime import optimizer_step

        optimizer_step(self)

    def state_dict(self) -> dict:
        """Hyperparameters, step count and state buffers (numpy arrays)."""
        tensors = OrderedDict()
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                tensors[f"state.{i}.{prefix}"] = np.array(arr)
        return {"type": type(self).__name__, "defaults": dict(self.defaults),
                "step": self.step_count, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned; checks type, keys and shapes first."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')}, "
                             f"not {type(self).__name__}")
        tensors = state["tensors"]
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                key = f"state.{i}.{prefix}"
                if key not in tensors:
                    raise ValueError(f"optimizer state is missing {key!r}")
                if tuple(np.shape(tensors[key])) != arr.shape:
                    raise ValueError(f"optimizer state {key!r} has shape "
                                     f"{tuple(np.shape(tensors[key]))}, expected {arr.shape}")
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                arr[...] = tensors[f"state.{i}.{prefix}"]
        self.defaults.update(state["defaults"])
        self.step_count = int(state["step"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 1))
        >>> sn.optim.SGD(m.parameters(), lr=0.1).defaults["lr"]
        0.1
    """

    def __init__(self, params, lr: float, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening = 0")
        self.state_prefixes = ("m",) if momentum else ()
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def update(self, P, dP):
        eqs, g = self._decayed(P, dP)
        if self.defaults["momentum"]:
            m = _named("m", P)
            if self.defaults["dampening"]:
                # PyTorch starts the buffer at the first gradient, undamped.
                rule = ew(lambda b, gr: sp.Piecewise(
                    (gr, sp.Eq(t, 1)), (momentum * b + (1 - dampening) * gr, True)), m, g)
            else:
                rule = ew(lambda b, gr: momentum * b + gr, m, g)
            eqs.append(_eq(m, rule))
            if self.defaults["nesterov"]:
                n = _named("n", P)
                eqs.append(_eq(n, ew(lambda gr, b: gr + momentum * b, g, m)))
                g = n
            else:
                g = m
        eqs.append(_eq(P, ew(lambda p, gr: p - lr * gr, P, g)))
        return eqs


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected, with PyTorch's L2 weight decay.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 1))
        >>> sn.optim.Adam(m.parameters()).defaults["betas"]
        (0.9, 0.999)
    """

    state_prefixes = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0):
        b1, b2 = betas
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0 <= b < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be in [0, 1), got {b}")
        super().__init__(params, dict(lr=lr, betas=(b1, b2), eps=eps,
                                      weight_decay=weight_decay))

    def hyperparameters(self) -> dict[str, float]:
        b1, b2 = self.defaults["betas"]
        return {"lr": float(self.defaults["lr"]), "beta1": float(b1), "beta2": float(b2),
                "eps": float(self.defaults["eps"]),
                "weight_decay": float(self.defaults["weight_decay"])}

    def update(self, P, dP):
        if self.decoupled:
            eqs, g = [], dP
        else:
            eqs, g = self._decayed(P, dP)
        m, v = _named("m", P), _named("v", P)
        m_hat, v_hat = _named("mhat", P), _named("vhat", P)
        eqs += [
            _eq(m, ew(lambda a, gr: beta1 * a + (1 - beta1) * gr, m, g)),
            _eq(v, ew(lambda a, gr: beta2 * a + (1 - beta2) * gr**2, v, g)),
            _eq(m_hat, ew(lambda a: a / (1 - beta1**t), m)),
            _eq(v_hat, ew(lambda a: a / (1 - beta2**t), v)),
        ]
        if self.decoupled and self.defaults["weight_decay"]:
            rule = ew(lambda p, a, b: p - lr * (a / (sp.sqrt(b) + eps) + weight_decay * p),
                      P, m_hat, v_hat)
        else:
            rule = ew(lambda p, a, b: p - lr * a / (sp.sqrt(b) + eps), P, m_hat, v_hat)
        eqs.append(_eq(P, rule))
        return eqs


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), default weight_decay 0.01.

    Example:
        >>> import symnet as sn
        >>> m = sn.Sequential(sn.Linear(2, 1))
        >>> sn.optim.AdamW(m.parameters()).defaults["weight_decay"]
        0.01
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
