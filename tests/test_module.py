"""symnet.nn.module: parameters, initialisation, dtype, state dicts and modes, against PyTorch."""

from __future__ import annotations

import re

import numpy as np
import pytest

import symnet as sn

torch = pytest.importorskip("torch")


def _pair():
    sn.manual_seed(0)
    ours = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3, bias=False), sn.Tanh(),
                         sn.Linear(3, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3, bias=False), torch.nn.Tanh(),
                                 torch.nn.Linear(3, 2))
    return ours, theirs


def test_parameter_names_and_shapes_equal_torch():
    ours, theirs = _pair()
    assert [(k, p.shape) for k, p in ours.named_parameters()] == \
        [(k, tuple(p.shape)) for k, p in theirs.named_parameters()]
    assert [p.shape for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_parameters_are_the_live_objects():
    model = sn.Sequential(sn.Linear(2, 3))
    model.parameters()[0].data[0, 0] = 42.0
    assert model[0].weight.data[0, 0] == 42.0


@pytest.mark.parametrize(("fan_in", "fan_out"), [(1, 50), (4, 300), (100, 40)])
def test_init_is_uniform_within_one_over_sqrt_fan_in(fan_in, fan_out):
    sn.manual_seed(1)
    layer = sn.Linear(fan_in, fan_out)
    bound = 1 / np.sqrt(fan_in)
    for values in (layer.weight.data, layer.bias.data):
        assert np.abs(values).max() <= bound
        # uniform on the whole interval, not a narrower one
        assert np.abs(values).max() > 0.8 * bound
        assert abs(values.mean()) < 0.25 * bound
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32


def test_manual_seed_reproduces_and_distinguishes_initialisation():
    def weights(seed):
        sn.manual_seed(seed)
        model = sn.Sequential(sn.Linear(5, 4), sn.Tanh(), sn.Linear(4, 2))
        return [p.data.copy() for p in model.parameters()]

    first, again, other = weights(7), weights(7), weights(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_to_returns_the_module_and_converts():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 2), sn.Sigmoid())
    before = [p.data.copy() for p in model.parameters()]
    assert model.to(np.float64) is model
    assert model.dtype == np.float64
    for p, old in zip(model.parameters(), before):
        assert p.data.dtype == np.float64 and p.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data, old.astype(np.float64))
    assert model.to("float32") is model
    assert all(p.dtype == np.float32 for p in model.parameters())
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(np.int32)


def test_to_converts_existing_gradients():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 2))
    out = model(np.ones((4, 3), np.float32))
    sn.MSELoss()(out, np.zeros((4, 2))).backward()
    model.to(np.float64)
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


def test_state_dict_round_trips_through_torch_exactly():
    ours, theirs = _pair()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ours.state_dict()[key])
    torch.manual_seed(5)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(3, 2))
    ours.load_state_dict({k: v.numpy() for k, v in fresh.state_dict().items()})
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy())
        assert ours.state_dict()[key].dtype == np.float32


def test_state_dict_forward_matches_torch():
    ours, theirs = _pair()
    theirs = theirs.double()
    theirs.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                            for k, v in ours.to(np.float64).state_dict().items()})
    X = np.random.default_rng(0).standard_normal((7, 4))
    expected = theirs(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(ours(X), expected, rtol=1e-12, atol=1e-14)


def test_state_dict_returns_copies():
    model = sn.Sequential(sn.Linear(2, 2))
    state = model.state_dict()
    state["0.weight"][...] = 123.0
    assert not (model[0].weight.data == 123.0).any()


@pytest.mark.parametrize(("edit", "names"), [
    (lambda s: s.pop("2.weight"), ["2.weight", "missing"]),
    (lambda s: s.update({"5.weight": np.zeros((2, 2), np.float32)}), ["5.weight", "unexpected"]),
    (lambda s: s.update({"0.bias": np.zeros(9, np.float32)}), ["0.bias", r"\(9,\)", r"\(8,\)"]),
    (lambda s: s.update({"4.weight": np.zeros((3, 2), np.float32)}), ["4.weight", r"\(3, 2\)"]),
])
def test_bad_state_dict_names_the_key_and_changes_nothing(edit, names):
    model, _ = _pair()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    sn.manual_seed(99)
    other, _ = _pair()
    state = {k: v + 1.0 for k, v in other.state_dict().items()}  # valid values first …
    edit(state)  # … and one problem, which must stop all of them
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    for name in names:
        assert re.search(name, str(info.value)), (name, str(info.value))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_unconvertible_value_fails_before_anything_changes():
    model, _ = _pair()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v + 1.0 for k, v in before.items()}
    state["4.bias"] = np.array(["not", "numbers"])  # right shape, last key
    with pytest.raises((ValueError, TypeError)):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_non_strict_load_ignores_missing_and_unexpected():
    model, _ = _pair()
    before = model.state_dict()
    model.load_state_dict({"0.bias": np.ones(8), "extra": np.ones(1)}, strict=False)
    np.testing.assert_array_equal(model[0].bias.data, np.ones(8, np.float32))
    np.testing.assert_array_equal(model[0].weight.data, before["0.weight"])


def test_nested_sequential_keys_and_forward_match_torch():
    sn.manual_seed(0)
    flat = sn.Sequential(sn.Linear(4, 5), sn.Tanh(), sn.Linear(5, 3)).to(np.float64)
    nested = sn.Sequential(sn.Sequential(sn.Linear(4, 5), sn.Tanh()),
                           sn.Sequential(sn.Linear(5, 3))).to(np.float64)
    theirs = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh()),
                                 torch.nn.Sequential(torch.nn.Linear(5, 3))).double()
    assert list(nested.state_dict()) == list(theirs.state_dict()) == \
        ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias"]
    X = np.random.default_rng(1).standard_normal((6, 4))
    flat(X)  # the same layers, flat, compiled first: must not confuse the nested model
    nested.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    expected = theirs(torch.tensor(X))
    np.testing.assert_allclose(nested(X), expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    labels = np.array([0, 1, 2, 0, 1, 2])
    sn.CrossEntropyLoss()(nested(X), labels).backward()
    torch.nn.functional.cross_entropy(expected, torch.tensor(labels)).backward()
    grads = dict(theirs.named_parameters())
    for key, p in nested.named_parameters():
        np.testing.assert_allclose(p.grad, grads[key].grad.numpy(), rtol=1e-10, atol=1e-14)


def test_train_and_eval_set_every_flag():
    model = sn.Sequential(sn.Linear(2, 2), sn.Sequential(sn.ReLU(), sn.Linear(2, 1)))
    modules = [model, *model.children(), *model[1].children()]
    assert all(m.training for m in modules)
    assert model.eval() is model
    assert not any(m.training for m in modules)
    assert model.train() is model
    assert all(m.training for m in modules)
    model.train(False)
    assert not any(m.training for m in modules)


def test_zero_grad_clears_gradients():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 2))
    sn.MSELoss()(model(np.ones((2, 3))), np.zeros((2, 2))).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_linear_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive integer"):
        sn.Linear(bad, 2)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="argument 1"):
        sn.Sequential(sn.Linear(2, 2), lambda z: z)


def test_layer_width_mismatch_names_the_layer():
    model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(7, 2))
    with pytest.raises(ValueError, match=r"Linear\(7, 2\).*8 features"):
        model(np.ones((3, 4), np.float32))
