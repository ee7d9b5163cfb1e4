"""symnet.backends.cpu: ``sn.compile(model, loss, opt)`` against torch.optim, step by step.

Every optimizer configuration trains the same float64 network on the same data for 50
fused steps; the per-step losses and the final parameters must match PyTorch to 1e-8.
A step that rejects its input must leave parameters and optimizer state untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from codegen import blas

torch = pytest.importorskip("torch")

IN, HIDDEN, OUT, BATCH, STEPS = 4, 6, 3, 16, 50

# name: (symnet optimizer factory, torch optimizer factory), same hyperparameters
OPTIMIZERS = {
    "SGD": (lambda p: sn.optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "SGD-weight-decay": (lambda p: sn.optim.SGD(p, lr=0.1, weight_decay=0.05),
                         lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "SGD-momentum": (lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "SGD-dampening": (lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3,
                                             weight_decay=0.01),
                      lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3,
                                                weight_decay=0.01)),
    "SGD-nesterov": (lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "Adam": (lambda p: sn.optim.Adam(p, lr=0.02), lambda p: torch.optim.Adam(p, lr=0.02)),
    "Adam-weight-decay": (lambda p: sn.optim.Adam(p, lr=0.02, betas=(0.8, 0.99),
                                                  weight_decay=0.1),
                          lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99),
                                                     weight_decay=0.1)),
    "AdamW": (lambda p: sn.optim.AdamW(p, lr=0.02, weight_decay=0.1, eps=1e-6),
              lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1, eps=1e-6)),
}


def _model(seed: int = 0) -> sn.Sequential:
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(IN, HIDDEN), sn.Tanh(), sn.Linear(HIDDEN, OUT)).to(np.float64)


def _data(seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, IN)), rng.integers(0, OUT, BATCH)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_step_matches_torch_optim(name, torch_mirror, assert_close):
    make, make_torch = OPTIMIZERS[name]
    model = _model()
    reference = torch_mirror(model)
    opt, t_opt = make(model.parameters()), make_torch(reference.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    X, labels = _data()
    t_X, t_labels = torch.tensor(X), torch.tensor(labels)
    losses, t_losses = [], []
    for _ in range(STEPS):
        losses.append(step(X, labels))
        t_opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(reference(t_X), t_labels)
        t_loss.backward()
        t_opt.step()
        t_losses.append(t_loss.item())
    assert_close(losses, t_losses, 1e-8, "losses")
    assert losses[-1] < losses[0]
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-8, key)
    assert opt.step_count == STEPS


def test_step_with_mse_and_sum_reduction_matches_torch(torch_mirror, assert_close):
    sn.manual_seed(4)
    model = sn.Sequential(sn.Linear(IN, HIDDEN), sn.Sigmoid(),
                          sn.Linear(HIDDEN, 2)).to(np.float64)
    reference = torch_mirror(model)
    opt = sn.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    t_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.5)
    step = sn.compile(model, sn.MSELoss(reduction="sum"), opt)
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((BATCH, IN)), rng.standard_normal((BATCH, 2))
    for _ in range(20):
        value = step(X, Y)
        t_opt.zero_grad()
        t_loss = torch.nn.functional.mse_loss(reference(torch.tensor(X)), torch.tensor(Y),
                                              reduction="sum")
        t_loss.backward()
        t_opt.step()
        assert value == pytest.approx(t_loss.item(), rel=1e-8)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-8, key)


def test_changing_lr_takes_effect_without_recompiling(torch_mirror, assert_close):
    model = _model()
    reference = torch_mirror(model)
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    t_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    X, labels = _data()
    for lr in (0.1, 0.5, 0.0, 0.02):
        opt.defaults["lr"] = lr
        for group in t_opt.param_groups:
            group["lr"] = lr
        step(X, labels)
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(torch.tensor(X)),
                                          torch.tensor(labels)).backward()
        t_opt.step()
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-10, key)


def test_float32_step_learns_a_tiny_problem():
    sn.manual_seed(2)
    model = sn.Sequential(sn.Linear(2, 8), sn.Tanh(), sn.Linear(8, 2))
    assert model.dtype == np.float32
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 2)).astype(np.float32)
    labels = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters(), lr=0.05))
    losses = [step(X, labels) for _ in range(100)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.dtype == np.float32 for p in model.parameters())
    accuracy = float((model(X).argmax(axis=1) == labels).mean())
    assert accuracy > 0.9


def test_source_names_the_formulas():
    model = _model()
    step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    source = step.source()
    assert ("_gemm(" if blas.choice() == "numpy-openblas64" else "np.dot(") in source
    assert "# dW2 = " in source
    assert "# dZ1 = " in source
    assert "def train_step(" in source
    compile(source, "<train_step>", "exec")  # the shown source is valid Python


def test_step_refuses_an_optimizer_over_other_parameters():
    model, other = _model(), _model()
    with pytest.raises(ValueError, match="model.parameters"):
        sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(other.parameters(), lr=0.1))


def test_step_after_dtype_change_is_a_type_error():
    model = _model()
    step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    X, labels = _data()
    model.to(np.float32)
    with pytest.raises(TypeError, match="float64"):
        step(X, labels)


def test_a_step_compiled_in_training_mode_refuses_the_model_in_eval_mode():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(IN, HIDDEN), sn.Dropout(0.5),
                          sn.Linear(HIDDEN, OUT)).to(np.float64)
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    X, labels = _data()
    step(X, labels)
    before, mask = [p.data.copy() for p in model.parameters()], model[1].last_mask
    model.eval()  # its equations have no dropout now; the kernel would reuse the last mask
    with pytest.raises(RuntimeError, match="compiled with the model in training mode"):
        step(X, labels)
    assert opt.step_count == 1
    for p, kept in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, kept)
    model.train()
    step(X, labels)
    assert opt.step_count == 2 and not np.array_equal(model[1].last_mask, mask)


def test_load_state_dict_between_steps_is_seen_by_the_step(torch_mirror, assert_close):
    model = _model()
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    X, labels = _data()
    step(X, labels)
    fresh = _model(seed=9)
    model.load_state_dict(fresh.state_dict())
    reference = torch_mirror(fresh)
    value = step(X, labels)
    expected = torch.nn.functional.cross_entropy(reference(torch.tensor(X)),
                                                 torch.tensor(labels)).item()
    assert value == pytest.approx(expected, rel=1e-10)


# --- bad input: errors, and nothing changes --------------------------------------------

BAD_STEPS = [
    (np.ones((BATCH, 5)), np.zeros(BATCH, np.int64), ValueError, r"Linear\(4, 6\)"),
    (np.ones(IN), np.zeros(1, np.int64), ValueError, r"Linear\(4, 6\)"),
    (np.ones((0, IN)), np.zeros(0, np.int64), ValueError, r"empty"),
    (np.full((BATCH, IN), np.nan), np.zeros(BATCH, np.int64), ValueError, r"NaN"),
    (np.ones((BATCH, IN)), np.full(BATCH, OUT), ValueError, rf"label {OUT}"),
    (np.ones((BATCH, IN)), np.full(BATCH, -1), ValueError, r"label -1"),
    (np.ones((BATCH, IN)), np.zeros(BATCH - 1, np.int64), ValueError, r"shape"),
    (np.ones((BATCH, IN)), np.zeros((BATCH, OUT)), ValueError, r"integer class indices"),
]


@pytest.mark.parametrize(("inputs", "labels", "error", "pattern"), BAD_STEPS)
def test_failing_step_changes_nothing(inputs, labels, error, pattern):
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=0.02)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    X, good = _data()
    step(X, good)
    params = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v.copy() for k, v in opt.state_dict()["tensors"].items()}
    with pytest.raises(error, match=pattern):
        step(inputs, labels)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, params[key], err_msg=key)
    for key, value in opt.state_dict()["tensors"].items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert opt.step_count == 1


def test_dense_target_of_wrong_shape_is_rejected():
    model = _model()
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    X, _ = _data()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"MSELoss.*\(16, 3\)"):
        step(X, np.zeros((BATCH, OUT + 1)))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_one_input_feature_network_trains_like_torch(torch_mirror, assert_close):
    """A weight of one input feature is (out, 1), shaped like a bias, but is a matrix."""
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(1, 4), sn.Tanh(), sn.Linear(4, 1)).to(np.float64)
    reference = torch_mirror(model)
    opt = sn.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01)
    t_opt = torch.optim.Adam(reference.parameters(), lr=0.05, weight_decay=0.01)
    X = np.linspace(-2.0, 2.0, 9).reshape(9, 1)
    Y = np.sin(X)

    def torch_step():
        t_opt.zero_grad()
        loss = torch.nn.functional.mse_loss(reference(torch.tensor(X)), torch.tensor(Y))
        loss.backward()
        t_opt.step()
        return loss.item()

    for _ in range(3):  # the PyTorch-style loop …
        opt.zero_grad()
        loss = sn.MSELoss()(model(X), Y)
        loss.backward()
        assert model[0].weight.grad.shape == (4, 1)
        opt.step()
        assert loss.item() == pytest.approx(torch_step(), rel=1e-10)
    step = sn.compile(model, sn.MSELoss(), opt)
    for _ in range(3):  # … then the fused step, continuing
        assert step(X, Y) == pytest.approx(torch_step(), rel=1e-10)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert value.shape == tuple(expected[key].shape)
        assert_close(value, expected[key].numpy(), 1e-10, key)
