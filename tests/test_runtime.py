"""symnet.backends.eager: model(X), loss_fn(out, y) and loss.backward() against PyTorch autograd.

The gradient table runs every activation with cross-entropy and MSE, and every loss after
Tanh with both reductions, in float64: the forward output, the loss and every ``p.grad``
must match the same torch network (weights copied) to 1e-10.  Central differences check a
few combinations without torch.  Bad input must raise a clear ValueError / TypeError.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn

torch = pytest.importorskip("torch")

IN, HIDDEN, OUT, BATCH = 4, 6, 3, 10
x = sp.Symbol("x")
p_, t_ = sp.symbols("p t")

# name: (symnet factory, torch function for a user activation or None)
ACTIVATIONS = {
    "ReLU": (sn.ReLU, None),
    "Sigmoid": (sn.Sigmoid, None),
    "Tanh": (sn.Tanh, None),
    "LeakyReLU": (lambda: sn.LeakyReLU(0.1), None),
    "Softplus": (sn.Softplus, None),
    "SiLU": (sn.SiLU, None),
    "GELU": (sn.GELU, None),
    "cube": (lambda: sn.Activation("cube", x**3 / 3 + x, x), lambda z: z**3 / 3 + z),
}


def _logcosh(reduction):
    return sn.Loss("logcosh", sp.log(sp.cosh(p_ - t_)), p_, t_, reduction=reduction)


def _torch_logcosh(reduction):
    def fn(out, target):
        values = torch.log(torch.cosh(out - target))
        return values.mean() if reduction == "mean" else values.sum()
    return fn


# name: (symnet loss, torch loss, symnet head after the last Linear, target kind)
LOSSES = {
    "MSE": (sn.MSELoss, lambda r: torch.nn.MSELoss(reduction=r), None, "dense"),
    "CE": (sn.CrossEntropyLoss, lambda r: torch.nn.CrossEntropyLoss(reduction=r), None,
           "labels"),
    "NLL": (sn.NLLLoss, lambda r: torch.nn.NLLLoss(reduction=r), sn.LogSoftmax, "labels"),
    "BCE": (sn.BCELoss, lambda r: torch.nn.BCELoss(reduction=r), sn.Sigmoid, "probability"),
    "BCEWithLogits": (sn.BCEWithLogitsLoss, lambda r: torch.nn.BCEWithLogitsLoss(reduction=r),
                      None, "probability"),
    "logcosh": (_logcosh, _torch_logcosh, None, "dense"),
}

CASES = sorted(
    {(act, "CE", "mean") for act in ACTIVATIONS}
    | {(act, "MSE", "sum") for act in ACTIVATIONS}
    | {("Tanh", loss, r) for loss in LOSSES for r in ("mean", "sum")}
)


def _network(activation: str, loss: str, seed: int = 0):
    sn.manual_seed(seed)
    head = LOSSES[loss][2]
    layers = [sn.Linear(IN, HIDDEN), ACTIVATIONS[activation][0](), sn.Linear(HIDDEN, OUT)]
    if head is not None:
        layers.append(head())
    return sn.Sequential(*layers).to(np.float64)


def _data(kind: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH, IN)) * 1.5
    if kind == "labels":
        target = rng.integers(0, OUT, BATCH)
    elif kind == "probability":
        target = rng.uniform(0.05, 0.95, (BATCH, OUT))
    else:
        target = rng.standard_normal((BATCH, OUT))
    return X, target


@pytest.mark.parametrize(("activation", "loss", "reduction"), CASES)
def test_gradients_match_torch_autograd(activation, loss, reduction, torch_mirror,
                                        assert_close):
    model = _network(activation, loss)
    make_loss, make_torch_loss, _, kind = LOSSES[loss]
    X, target = _data(kind)
    reference = torch_mirror(model, {"cube": ACTIVATIONS["cube"][1]})

    out = model(X)
    value = make_loss(reduction)(out, target)
    value.backward()

    t_out = reference(torch.tensor(X))
    t_target = torch.tensor(target)
    t_value = make_torch_loss(reduction)(t_out, t_target)
    t_value.backward()

    assert out.dtype == np.float64 and out.shape == (BATCH, OUT)
    assert_close(out, t_out.detach().numpy(), 1e-10, "output")
    assert value.item() == pytest.approx(t_value.item(), rel=1e-10)
    grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert_close(parameter.grad, grads[name].grad.numpy(), 1e-10, name)


def _loss_at(model, loss_fn, X, target) -> float:
    return loss_fn(model(X), target).item()


@pytest.mark.parametrize(("activation", "loss", "reduction"),
                         [("GELU", "CE", "mean"), ("cube", "MSE", "sum"),
                          ("Tanh", "BCE", "mean"), ("Tanh", "logcosh", "sum")])
def test_gradients_match_central_differences(activation, loss, reduction, assert_close,
                                             central_difference):
    model = _network(activation, loss)
    loss_fn = LOSSES[loss][0](reduction)
    X, target = _data(LOSSES[loss][3])
    loss_fn(model(X), target).backward()
    for name, parameter in model.named_parameters():
        numeric = central_difference(parameter, lambda: _loss_at(model, loss_fn, X, target),
                                     h=1e-5)
        assert_close(parameter.grad, numeric, 1e-6, name)


def test_backward_accumulates_until_zero_grad(torch_mirror, assert_close):
    model = _network("Tanh", "CE")
    X, labels = _data("labels")
    reference = torch_mirror(model)
    for _ in range(2):
        sn.CrossEntropyLoss()(model(X), labels).backward()
        torch.nn.CrossEntropyLoss()(reference(torch.tensor(X)), torch.tensor(labels)).backward()
    grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert_close(parameter.grad, grads[name].grad.numpy(), 1e-10, name)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    sn.CrossEntropyLoss()(model(X), labels).backward()
    for name, parameter in model.named_parameters():
        assert_close(2 * parameter.grad, grads[name].grad.numpy(), 1e-10, name)


def test_backward_twice_on_one_loss_is_refused():
    """A second backward() on the same loss must not add the gradient twice silently."""
    model = _network("Tanh", "MSE")
    X, target = _data("dense")
    value = sn.MSELoss()(model(X), target)
    value.backward()
    first = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="already"):
        value.backward()
    for before, parameter in zip(first, model.parameters()):
        np.testing.assert_array_equal(parameter.grad, before)


def test_loss_of_an_unrelated_array_is_an_error():
    model = _network("Tanh", "MSE")
    X, target = _data("dense")
    with pytest.raises(ValueError, match="model\\(X\\)"):
        sn.MSELoss()(np.array(model(X)), target)


def test_large_logits_give_finite_cross_entropy_and_gradients(torch_mirror, assert_close):
    model = _network("Tanh", "CE")
    model[2].weight.data *= 400.0  # logits of several hundred: exp() would overflow
    X, labels = _data("labels")
    reference = torch_mirror(model)
    value = sn.CrossEntropyLoss()(model(X), labels)
    value.backward()
    t_value = torch.nn.CrossEntropyLoss()(reference(torch.tensor(X)), torch.tensor(labels))
    t_value.backward()
    assert np.isfinite(value.item())
    assert value.item() == pytest.approx(t_value.item(), rel=1e-10)
    grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert np.isfinite(parameter.grad).all(), name
        assert_close(parameter.grad, grads[name].grad.numpy(), 1e-10, name)


def test_float32_forward_matches_float64_reference(torch_mirror, assert_close):
    sn.manual_seed(3)
    model = sn.Sequential(sn.Linear(IN, HIDDEN), sn.ReLU(), sn.Linear(HIDDEN, OUT))
    X, _ = _data("dense")
    out = model(X.astype(np.float32))
    assert out.dtype == np.float32
    expected = torch_mirror(model)(torch.tensor(X.astype(np.float32), dtype=torch.float64))
    assert_close(out, expected.detach().numpy(), 1e-5, "float32 output")


# --- bad input: clear errors, never a Numba traceback ------------------------------------

@pytest.fixture(scope="module")
def small():
    sn.manual_seed(0)
    return sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3)).to(np.float64)


@pytest.mark.parametrize(("inputs", "error", "pattern"), [
    (np.ones((5, 3)), ValueError, r"Linear\(4, 8\).*3 features"),
    (np.ones(4), ValueError, r"Linear\(4, 8\).*shape"),
    (np.ones((2, 5, 4)), ValueError, r"Linear\(4, 8\)"),
    (np.ones((0, 4)), ValueError, r"empty"),
    (np.array([[1.0, np.nan, 0.0, 0.0]]), ValueError, r"NaN"),
    (np.array([[1.0, np.inf, 0.0, 0.0]]), ValueError, r"Inf"),
    (np.array([["a", "b", "c", "d"]]), TypeError, r"dtype"),
])
def test_forward_rejects_bad_input(small, inputs, error, pattern):
    with pytest.raises(error, match=pattern):
        small(inputs)


@pytest.mark.parametrize(("loss", "target", "pattern"), [
    (sn.MSELoss(), np.ones((6, 2)), r"MSELoss.*\(6, 3\)"),
    (sn.MSELoss(), np.ones((5, 3)), r"\(6, 3\)"),
    (sn.MSELoss(), np.full((6, 3), np.nan), r"NaN"),
    (sn.CrossEntropyLoss(), np.array([0, 1, 2, 3, 0, 1]), r"label 3"),
    (sn.CrossEntropyLoss(), np.array([0, 1, -1, 2, 0, 1]), r"label -1"),
    (sn.CrossEntropyLoss(), np.zeros(6), r"integer class indices"),
    (sn.CrossEntropyLoss(), np.zeros((6, 1), np.int64), r"shape \(6,\)"),
])
def test_loss_rejects_bad_targets_and_keeps_gradients(small, loss, target, pattern):
    out = small(np.ones((6, 4)))
    small.zero_grad()
    with pytest.raises(ValueError, match=pattern):
        loss(out, target)
    assert all(p.grad is None for p in small.parameters())


def test_integer_input_is_converted(small, assert_close):
    ints = np.arange(8).reshape(2, 4)
    assert_close(small(ints), small(ints.astype(np.float64)), 0.0, "int input")


def test_model_without_a_linear_layer_is_a_value_error():
    with pytest.raises(ValueError, match="input width is unknown: it has no Linear"):
        sn.Sequential(sn.Tanh())(np.ones((2, 3)))


def test_non_contiguous_input_is_read_correctly(small, torch_mirror, assert_close):
    rng = np.random.default_rng(8)
    wide = rng.standard_normal((6, 8))
    for X in (wide[:, ::2], np.asfortranarray(wide[:, :4]), wide[::-1, 1:5]):
        expected = torch_mirror(small)(torch.tensor(np.array(X))).detach().numpy()
        assert_close(small(X), expected, 1e-12, "strided input")
