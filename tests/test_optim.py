"""symnet.optim: the PyTorch-style loop against torch.optim, state dicts and checkpoints.

``zero_grad`` / ``loss.backward()`` / ``opt.step()`` must follow torch.optim step for step;
an optimizer restored from its state dict (also through ``sn.save`` / ``sn.load``) must
continue exactly where uninterrupted training would be.
"""

from __future__ import annotations

import numpy as np
import pytest

import symnet as sn

torch = pytest.importorskip("torch")

IN, HIDDEN, OUT, BATCH = 4, 6, 3, 16

OPTIMIZERS = {
    "SGD": (lambda p: sn.optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "SGD-nesterov-decay": (
        lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "SGD-dampening": (lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
                      lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3)),
    "Adam-weight-decay": (lambda p: sn.optim.Adam(p, lr=0.02, weight_decay=0.1),
                          lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.1)),
    "AdamW": (lambda p: sn.optim.AdamW(p, lr=0.02, betas=(0.8, 0.95)),
              lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.8, 0.95))),
}


def _model(seed: int = 0) -> sn.Sequential:
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(IN, HIDDEN), sn.Tanh(), sn.Linear(HIDDEN, OUT)).to(np.float64)


def _batches(count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, IN)), rng.integers(0, OUT, BATCH))
            for _ in range(count)]


def _torch_step(net, opt, X, labels, backward_calls: int = 1) -> float:
    opt.zero_grad()
    for _ in range(backward_calls):
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(X)), torch.tensor(labels))
        loss.backward()
    opt.step()
    return loss.item()


def _step(model, opt, X, labels, backward_calls: int = 1) -> float:
    opt.zero_grad()
    for _ in range(backward_calls):
        loss = sn.CrossEntropyLoss()(model(X), labels)
        loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pytorch_style_loop_matches_torch_optim(name, torch_mirror, assert_close):
    make, make_torch = OPTIMIZERS[name]
    model = _model()
    reference = torch_mirror(model)
    opt, t_opt = make(model.parameters()), make_torch(reference.parameters())
    for X, labels in _batches(20):
        value = _step(model, opt, X, labels)
        assert value == pytest.approx(_torch_step(reference, t_opt, X, labels), rel=1e-9)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-8, key)


def test_gradient_accumulation_matches_torch(torch_mirror, assert_close):
    model = _model()
    reference = torch_mirror(model)
    opt = sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    X, labels = _batches(1)[0]
    opt.zero_grad()
    sn.CrossEntropyLoss()(model(X), labels).backward()
    single = [p.grad.copy() for p in model.parameters()]
    sn.CrossEntropyLoss()(model(X), labels).backward()
    for p, g in zip(model.parameters(), single):
        assert_close(p.grad, 2 * g, 1e-12, "doubled")
    opt.step()
    _torch_step(reference, t_opt, X, labels, backward_calls=2)
    for X, labels in _batches(5, seed=2):
        _step(model, opt, X, labels, backward_calls=2)
        _torch_step(reference, t_opt, X, labels, backward_calls=2)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-9, key)


def test_parameters_without_gradients_are_skipped_like_torch(torch_mirror, assert_close):
    model = _model()
    reference = torch_mirror(model)
    opt = sn.optim.Adam(model.parameters(), lr=0.05)
    t_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    frozen = model.state_dict()["0.weight"]
    for X, labels in _batches(5):
        opt.zero_grad()
        sn.CrossEntropyLoss()(model(X), labels).backward()
        model[0].weight.grad = None
        opt.step()
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(torch.tensor(X)),
                                          torch.tensor(labels)).backward()
        reference[0].weight.grad = None
        t_opt.step()
    np.testing.assert_array_equal(model[0].weight.data, frozen)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, expected[key].numpy(), 1e-9, key)


def test_step_without_any_gradient_does_nothing():
    model = _model()
    opt = sn.optim.Adam(model.parameters())
    before = model.state_dict()
    opt.step()
    assert opt.step_count == 0
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


# --- state dicts and checkpoints ---------------------------------------------------------

def _train_loop(model, opt, batches):
    for X, labels in batches:
        _step(model, opt, X, labels)


def _train_fused(model, opt, batches):
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    for X, labels in batches:
        step(X, labels)


RESUMABLE = {
    "Adam": lambda p: sn.optim.Adam(p, lr=0.05, betas=(0.8, 0.9)),
    "SGD-momentum": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
}


@pytest.mark.parametrize("train", [_train_loop, _train_fused], ids=["loop", "fused"])
@pytest.mark.parametrize("name", list(RESUMABLE))
@pytest.mark.parametrize("through_file", [False, True], ids=["memory", "file"])
def test_restored_optimizer_continues_like_uninterrupted_training(name, train, through_file,
                                                                  tmp_path):
    make = RESUMABLE[name]
    batches = _batches(12)
    straight = _model()
    train(straight, make(straight.parameters()), batches)

    first = _model()
    opt = make(first.parameters())
    train(first, opt, batches[:5])
    checkpoint = {"model": first.state_dict(), "optimizer": opt.state_dict()}
    if through_file:
        path = tmp_path / "checkpoint.safetensors"
        sn.save(checkpoint, path)
        checkpoint = sn.load(path)

    resumed = _model(seed=42)  # different weights: all must come from the checkpoint
    resumed_opt = make(resumed.parameters())
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert resumed_opt.step_count == 5
    train(resumed, resumed_opt, batches[5:])
    for key, value in resumed.state_dict().items():
        np.testing.assert_array_equal(value, straight.state_dict()[key], err_msg=key)
    assert resumed_opt.step_count == 12


def test_resuming_without_the_optimizer_state_differs():
    """The round-trip test above can fail: without the state, training diverges."""
    make = RESUMABLE["Adam"]
    batches = _batches(8)
    straight = _model()
    _train_loop(straight, make(straight.parameters()), batches)
    first = _model()
    _train_loop(first, make(first.parameters()), batches[:4])
    resumed = _model(seed=42)
    resumed.load_state_dict(first.state_dict())
    _train_loop(resumed, make(resumed.parameters()), batches[4:])
    assert not np.allclose(resumed[0].weight.data, straight[0].weight.data, rtol=1e-6)


def test_state_dict_is_a_copy_with_hyperparameters():
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=0.01, betas=(0.85, 0.95))
    _train_loop(model, opt, _batches(2))
    state = opt.state_dict()
    assert state["type"] == "Adam" and state["step"] == 2
    assert state["defaults"]["betas"] == (0.85, 0.95)
    assert sorted(state["tensors"]) == sorted(
        f"state.{i}.{prefix}" for i in range(4) for prefix in ("m", "v"))
    for array in state["tensors"].values():
        array[...] = 0.0
    assert any(np.abs(st["m"]).max() > 0 for st in opt.state)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda s: s.update(type="SGD"), "SGD"),
    (lambda s: s["tensors"].pop("state.3.v"), "state.3.v"),
    (lambda s: s["tensors"].update({"state.1.m": np.zeros(7)}), "state.1.m"),
])
def test_bad_optimizer_state_is_rejected_and_changes_nothing(edit, pattern):
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=0.01)
    _train_loop(model, opt, _batches(2))
    other = sn.optim.Adam(_model().parameters(), lr=0.5)
    state = other.state_dict()
    state["tensors"] = {k: v + 1.0 for k, v in state["tensors"].items()}
    edit(state)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["step"] == before["step"] and after["defaults"] == before["defaults"]
    for key, value in after["tensors"].items():
        np.testing.assert_array_equal(value, before["tensors"][key], err_msg=key)


@pytest.mark.parametrize(("make", "error", "pattern"), [
    (lambda p: sn.optim.SGD([], lr=0.1), ValueError, "empty"),
    (lambda p: sn.optim.SGD([np.zeros(2)], lr=0.1), TypeError, "Parameter"),
    (lambda p: sn.optim.SGD(p, lr=-0.1), ValueError, "learning rate"),
    (lambda p: sn.optim.SGD(p, lr=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, "Nesterov"),
    (lambda p: sn.optim.Adam(p, betas=(1.0, 0.9)), ValueError, "beta parameter at index 0"),
    (lambda p: sn.optim.Adam(p, eps=-1.0), ValueError, "epsilon"),
])
def test_bad_hyperparameters_are_rejected(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make(_model().parameters())
