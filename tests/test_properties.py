"""Property tests: Hypothesis draws small random networks (depth, widths, an activation per
layer, loss, optimizer, dtype) and checks three guarantees on each:

* the symbolic backward pass is proved equal to ``sympy.diff`` (``derive(...).verify()``);
* the compiled gradients (``loss.backward()``) match float64 central differences of an
  independent NumPy forward pass;
* save → load → continue training ends bit-identical to continuing without saving.

Examples are few and derandomized (every compile costs seconds), so the file stays fast
and a failure reproduces on every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symnet as sn

SETTINGS = settings(max_examples=5, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

_erf = np.vectorize(math.erf)
# name: (symnet module factory, NumPy reference)
ACTIVATIONS = {
    "ReLU": (sn.ReLU, lambda z: np.maximum(z, 0.0)),
    "Sigmoid": (sn.Sigmoid, lambda z: 1.0 / (1.0 + np.exp(-z))),
    "Tanh": (sn.Tanh, np.tanh),
    "SiLU": (sn.SiLU, lambda z: z / (1.0 + np.exp(-z))),
    "GELU": (sn.GELU, lambda z: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))),
    "LeakyReLU": (lambda: sn.LeakyReLU(0.1), lambda z: np.where(z > 0, z, 0.1 * z)),
    "Softplus": (sn.Softplus, lambda z: np.logaddexp(0.0, z)),
}


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# name: (factory, target kind, NumPy reference loss of (output, target))
LOSSES = {
    "MSELoss": (sn.MSELoss, "dense", lambda out, y: np.mean((out - y) ** 2)),
    "CrossEntropyLoss": (sn.CrossEntropyLoss, "index",
                         lambda out, y: -np.mean(_log_softmax(out)[np.arange(len(y)), y])),
    "BCEWithLogitsLoss": (sn.BCEWithLogitsLoss, "dense",
                          lambda out, y: np.mean(np.logaddexp(0.0, out) - y * out)),
}
OPTIMIZERS = {
    "SGD": lambda p: sn.optim.SGD(p, lr=0.05),
    "SGD-momentum": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda p: sn.optim.Adam(p, lr=0.01),
    "AdamW": lambda p: sn.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@st.composite
def networks(draw, max_depth: int = 3, max_width: int = 5):
    """``(widths, activations, loss name)``: ``len(widths) - 1`` Linear layers."""
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    activations = draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=depth - 1,
                                max_size=depth - 1))
    loss = draw(st.sampled_from(sorted(LOSSES)))
    if loss == "CrossEntropyLoss":
        widths[-1] = max(widths[-1], 2)
    return widths, activations, loss


def _build(widths, activations, dtype=np.float64, seed=0) -> sn.Sequential:
    sn.manual_seed(seed)
    layers = [sn.Linear(widths[0], widths[1])]
    for k, name in enumerate(activations, start=1):
        layers += [ACTIVATIONS[name][0](), sn.Linear(widths[k], widths[k + 1])]
    return sn.Sequential(*layers).to(dtype)


def _batch(widths, loss, seed=0, batch=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, widths[0]))
    if LOSSES[loss][1] == "index":
        return X, rng.integers(0, widths[-1], batch)
    return X, rng.uniform(0.0, 1.0, (batch, widths[-1]))


def _numpy_loss(model, activations, loss, X, y) -> float:
    linear = [m for m in model.layers() if isinstance(m, sn.Linear)]
    h = X
    for k, layer in enumerate(linear):
        h = h @ layer.weight.data.T + layer.bias.data
        if k < len(activations):
            h = ACTIVATIONS[activations[k]][1](h)
    return float(LOSSES[loss][2](h, y))


@SETTINGS
@given(networks(max_depth=3, max_width=3))
def test_symbolic_backward_is_proved(net):
    widths, activations, loss = net
    model = _build(widths, activations)
    report = sn.derive(model, LOSSES[loss][0]()).verify(size=2, batch=1)
    assert report, str(report)


@settings(SETTINGS, max_examples=8)
@given(networks())
def test_compiled_gradients_match_central_differences(central_difference, net):
    widths, activations, loss = net
    model = _build(widths, activations)
    X, y = _batch(widths, loss)
    model.zero_grad()
    LOSSES[loss][0]()(model(X), y).backward()
    for name, parameter in model.named_parameters():
        numeric = central_difference(
            parameter, lambda: _numpy_loss(model, activations, loss, X, y), h=1e-6)
        scale = max(np.abs(numeric).max(), 1e-3)
        err = np.abs(parameter.grad - numeric).max() / scale
        assert err < 1e-5, f"{name}: relative error {err:.2e} ({widths}, {activations}, {loss})"


@settings(SETTINGS, max_examples=8)
@given(networks(), st.sampled_from(sorted(OPTIMIZERS)), st.sampled_from(["float32", "float64"]),
       st.integers(1, 3), st.integers(1, 3))
def test_save_load_continue_is_bit_identical(tmp_path_factory, net, optimizer, dtype, before,
                                             after):
    widths, activations, loss = net
    X, y = _batch(widths, loss, batch=6)
    X = X.astype(dtype)
    y = y.astype(dtype) if LOSSES[loss][1] == "dense" else y

    def trainer(seed):
        model = _build(widths, activations, dtype, seed)
        opt = OPTIMIZERS[optimizer](model.parameters())
        return model, opt, sn.compile(model, LOSSES[loss][0](), opt)

    model, opt, step = trainer(0)
    for _ in range(before):
        step(X, y)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.safetensors"
    sn.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    resumed, resumed_opt, resumed_step = trainer(1)  # other initial weights, overwritten
    checkpoint = sn.load(path)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    losses = [step(X, y) for _ in range(after)]
    assert [resumed_step(X, y) for _ in range(after)] == losses
    for (key, value), (_, other) in zip(model.state_dict().items(),
                                        resumed.state_dict().items()):
        assert value.dtype == other.dtype == np.dtype(dtype)
        assert value.tobytes() == other.tobytes(), key
    for key, value in opt.state_dict()["tensors"].items():
        assert value.tobytes() == resumed_opt.state_dict()["tensors"][key].tobytes(), key
    assert resumed_opt.step_count == opt.step_count == before + after


def test_the_reference_loss_agrees_with_the_compiled_one():
    """The NumPy reference used above is itself right: it matches the kernels' loss value."""
    widths, activations = [3, 4, 2], ["GELU"]
    model = _build(widths, activations)
    for loss in LOSSES:
        X, y = _batch(widths, loss)
        value = LOSSES[loss][0]()(model(X), y).item()
        assert value == pytest.approx(_numpy_loss(model, activations, loss, X, y), rel=1e-12)
