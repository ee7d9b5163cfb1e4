"""SGD, Adam and AdamW with PyTorch's exact semantics, written as update equations.

Each optimizer turns ``(P, dP)`` pairs into equations: ``P ← P − η·dP`` for plain SGD;
Adam's ``m``, ``v`` and bias-corrected ``m̂``, ``v̂``.  Left sides that are parameters or
optimizer state are assignments (``←``); the others are temporaries a kernel keeps in
registers.  Hyperparameters stay symbols, so changing ``lr`` never recompiles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import MutableMapping

import numpy as np
import sympy as sp

from symnet.nn.devices import backend
from symnet.nn.parameter import Parameter
from symnet.symbolic.graph import ew

lr, beta1, beta2, eps, weight_decay, momentum, dampening = sp.symbols(
    "lr beta1 beta2 eps weight_decay momentum dampening", real=True)
t = sp.Symbol("t", integer=True, positive=True)


def _named(prefix: str, P: sp.MatrixSymbol) -> sp.MatrixSymbol:
    return sp.MatrixSymbol(prefix + P.name, *P.shape)


def _eq(lhs, rhs) -> sp.Eq:
    return sp.Eq(lhs, rhs, evaluate=False)


class _Strict(type):
    """Optimizers refuse unknown attributes once built: ``opt.lr = 0`` would otherwise be a
    new attribute no kernel reads (PyTorch's is ``opt.param_groups[0]["lr"]``, which works)."""

    def __call__(cls, *args, **kwargs):
        optimizer = super().__call__(*args, **kwargs)
        object.__setattr__(optimizer, "_built", True)
        return optimizer


class Hyperparameters(dict):
    """An optimizer's hyperparameters by name, checked on every write as at construction.

    A value that would change the update's equations (SGD's momentum from 0 to 0.9, a weight
    decay from 0 to 0.01, Nesterov on or off) is refused too: the compiled kernels have no
    buffer for it, so the new value would be ignored.  Build a new optimizer instead.
    """

    def __init__(self, owner: Optimizer, values: dict):
        super().__init__()
        self._owner = owner
        for key, value in values.items():
            dict.__setitem__(self, key, owner._checked(key, value))

    def __setitem__(self, key: str, value) -> None:
        if key not in self:
            raise KeyError(f"{type(self._owner).__name__} has no hyperparameter {key!r} "
                           f"(it has {', '.join(self)})")
        value = self._owner._checked(key, value)
        before = self._owner._structure()
        old = dict.__getitem__(self, key)
        dict.__setitem__(self, key, value)
        if self._owner._structure() != before:
            dict.__setitem__(self, key, old)
            raise ValueError(f"{type(self._owner).__name__}: changing {key} from {old!r} to "
                             f"{value!r} changes the update's equations (its state buffers "
                             f"and kernels were built for {key}={old!r}): build a new optimizer")

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default  # KeyError: no new hyperparameters
        return self[key]

    def __reduce__(self):
        return dict, (dict(self),)


class ParamGroup(MutableMapping):
    """PyTorch's ``optimizer.param_groups[0]``: ``"params"`` and the live hyperparameters.

    Writing ``group["lr"] = 0.01`` changes the next step's learning rate (checked as at
    construction); other keys (a scheduler's ``initial_lr``) are kept for their owner.
    """

    def __init__(self, optimizer: Optimizer):
        self._optimizer = optimizer
        self._extra: dict = {}

    def __getitem__(self, key):
        if key == "params":
            return list(self._optimizer.params)
        if key in self._optimizer.defaults:
            return self._optimizer.defaults[key]
        return self._extra[key]

    def __setitem__(self, key, value) -> None:
        if key == "params":
            raise TypeError("the parameters of an optimizer are fixed: build a new one")
        if key in self._optimizer.defaults:
            self._optimizer.defaults[key] = value
        else:
            self._extra[key] = value

    def __delitem__(self, key) -> None:
        if key == "params" or key in self._optimizer.defaults:
            raise TypeError(f"{key!r} cannot be removed from an optimizer's parameter group")
        del self._extra[key]

    def __iter__(self):
        return iter(("params", *self._optimizer.defaults, *self._extra))

    def __len__(self) -> int:
        return 1 + len(self._optimizer.defaults) + len(self._extra)

    def __repr__(self) -> str:
        return repr({k: v for k, v in self.items() if k != "params"})


def _real(value, message: str) -> float:
    """``value`` as a finite float, or ValueError(``message``) (PyTorch's wording)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{message}: expected a real number, got {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(message)
    return value


class Optimizer(metaclass=_Strict):
    """Base class: parameter list, hyperparameters, per-parameter state, the step count.

    Hyperparameters are checked as torch.optim checks them (same messages), and NaN or Inf
    is refused too.  They live in ``defaults`` (also ``param_groups[0]``, as in PyTorch):
    change a value there and the next step uses it, without recompiling.

    Example:
        >>> import symnet as sn
        >>> opt = sn.optim.SGD(sn.Linear(2, 1).parameters(), lr=0.1)
        >>> opt.param_groups[0]["lr"] = 0.01
        >>> opt.defaults["lr"]
        0.01
        >>> opt.lr = 0
        Traceback (most recent call last):
        ...
        AttributeError: SGD has no attribute 'lr' to set: hyperparameters are \
opt.param_groups[0]['lr'] (or opt.defaults['lr']), as in torch.optim
    """

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
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter appears more than once in "
                             "the list (pass model.parameters(), which lists each once)")
        self.params = params
        self.defaults = Hyperparameters(self, defaults)
        self.param_groups = [ParamGroup(self)]
        self.step_count = 0
        self.state: list[dict[str, np.ndarray]] = [
            {prefix: np.zeros(p.shape, p.dtype) for prefix in self.state_prefixes}
            for p in params]

    def __setattr__(self, name: str, value) -> None:
        # An attribute it has (step_count, every step) or a private one: set, and no more.
        known = name in self.__dict__ or name.startswith("_") or hasattr(type(self), name)
        if not known and getattr(self, "_built", False):
            hint = (f": hyperparameters are opt.param_groups[0][{name!r}] (or "
                    f"opt.defaults[{name!r}]), as in torch.optim") if name in self.defaults \
                else f" (its hyperparameters: {', '.join(self.defaults)})"
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} to set{hint}")
        object.__setattr__(self, name, value)

    def _checked(self, key: str, value):
        """``value`` for hyperparameter ``key`` if valid (`SGD`/`Adam` say what is)."""
        if key in ("lr", "weight_decay", "momentum", "dampening"):
            words = {"lr": "learning rate", "weight_decay": "weight_decay value",
                     "momentum": "momentum value", "dampening": "dampening value"}[key]
            if _real(value, f"Invalid {words}: {value}") < 0:
                raise ValueError(f"Invalid {words}: {value}")
        return value

    def _structure(self) -> tuple:
        """What the update's equations depend on besides values: zero or not, flags."""
        return (bool(self.defaults.get("weight_decay")),)

    def state_arrays(self, parameter: Parameter, state: dict) -> list[np.ndarray]:
        """``state``'s buffers in `state_prefixes` order, checked against ``parameter``
        (shape, dtype, C-contiguous) before a kernel writes them."""
        arrays = []
        for prefix in self.state_prefixes:
            a = state.get(prefix)
            if not isinstance(a, np.ndarray) or a.shape != parameter.shape or \
                    a.dtype != parameter.dtype or not a.flags.c_contiguous:
                what = "missing" if a is None else f"{type(a).__name__} " + (
                    f"{a.dtype} of shape {a.shape}" if isinstance(a, np.ndarray) else "")
                raise ValueError(f"{type(self).__name__}: state {prefix!r} of {parameter._label} "
                                 f"is {what}; expected a C-contiguous {parameter.dtype} array of "
                                 f"shape {parameter.shape}")
            arrays.append(a)
        return arrays

    # --- symbolic --------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        """Values of the scalar symbols the update equations use."""
        return {k: float(v) for k, v in self.defaults.items() if not isinstance(v, bool)}

    def scalars(self, names: tuple[str, ...], dtype, t: int) -> list:
        """The values of a kernel's scalar arguments ``names``, in order: hyperparameters in
        ``dtype`` (a float32 update loop stays float32), ``t`` the step number.

        Example:
            >>> import numpy as np, symnet as sn
            >>> opt = sn.optim.Adam(sn.Linear(2, 1).parameters(), lr=0.5)
            >>> opt.scalars(("lr", "t"), np.float32, 3)
            [np.float32(0.5), 3]
        """
        hyper = self.hyperparameters()
        return [t if s == "t" else dtype(hyper[s]) for s in names]

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
        backend("cpu").update(self)  # host kernels, whatever the parameters' device

    def state_dict(self) -> dict:
        """Hyperparameters, step count and state buffers (numpy arrays)."""
        tensors = OrderedDict()
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                tensors[f"state.{i}.{prefix}"] = np.array(arr)
        return {"type": type(self).__name__, "defaults": dict(self.defaults),
                "step": self.step_count, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned; type, keys, shapes and hyperparameters are all
        checked before anything changes (a ValueError or TypeError says what is wrong)."""
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            found = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"optimizer state is for {found}, not {type(self).__name__}")
        tensors, defaults, step = state.get("tensors"), state.get("defaults"), state.get("step")
        if not isinstance(tensors, dict) or not isinstance(defaults, dict):
            raise ValueError("optimizer state needs 'tensors' and 'defaults' dicts")
        if set(defaults) != set(self.defaults):
            raise ValueError(f"optimizer state has hyperparameters {sorted(defaults)}, "
                             f"{type(self).__name__} has {sorted(self.defaults)}")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"optimizer state's step must be an integer ≥ 0, got {step!r}")
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                key = f"state.{i}.{prefix}"
                if key not in tensors:
                    raise ValueError(f"optimizer state is missing {key!r}")
                if tuple(np.shape(tensors[key])) != arr.shape:
                    raise ValueError(f"optimizer state {key!r} has shape "
                                     f"{tuple(np.shape(tensors[key]))}, expected {arr.shape}")
        before = dict(self.defaults)
        try:
            self.defaults.update(defaults)
        except (TypeError, ValueError):
            dict.update(self.defaults, before)
            raise
        for i, st in enumerate(self.state):
            for prefix, arr in st.items():
                arr[...] = tensors[f"state.{i}.{prefix}"]
        self.step_count = int(step)

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
        self.state_prefixes = ("m",) if momentum else ()
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _checked(self, key: str, value):
        if key == "nesterov":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"nesterov must be True or False, got {value!r}")
            return bool(value)
        return super()._checked(key, value)

    def _structure(self) -> tuple:
        d = self.defaults
        return (*super()._structure(), bool(d["momentum"]), bool(d["dampening"]),
                d["nesterov"])

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
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay))

    def _checked(self, key: str, value):
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
            for index, b in enumerate(value):
                message = f"Invalid beta parameter at index {index}: {b}"
                if not 0 <= _real(b, message) < 1:
                    raise ValueError(message)
            return tuple(value)
        if key == "eps":
            message = f"Invalid epsilon value: {value}"
            if _real(value, message) < 0:
                raise ValueError(message)
            if value == 0:  # PyTorch allows it; 0/(√0 + 0) is NaN for a zero gradient
                raise ValueError(message + " (eps must be > 0)")
            return value
        return super()._checked(key, value)

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
