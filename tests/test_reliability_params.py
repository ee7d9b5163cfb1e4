"""Reliability of what reaches a kernel: parameter arrays of the declared shape only, a
module used twice gets the sum of its gradients, and no NaN reaches the parameters unasked.

References are independent: PyTorch's autograd and torch.optim (float64) for gradients and
updates, torch.optim's own constructor for hyperparameter messages, byte copies taken
before a refused call for "nothing changed".  What used to crash the process (a wrong-shape
weight handed to BLAS) runs in a subprocess, so a regression fails one test, not the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

import symnet as sn

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes(model: sn.Module, opt=None) -> tuple:
    params = {k: v.tobytes() for k, v in model.state_dict().items()}
    if opt is None:
        return params
    state = {k: np.asarray(v).tobytes() for k, v in opt.state_dict()["tensors"].items()}
    return params, state, opt.step_count


def _run(body: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# --- 1. assigning a parameter of the wrong shape -----------------------------------------

def test_the_reported_crash_is_a_clear_error_now():
    """The issue's reproduction: a (2, 4) weight on Linear(4, 16), then model(X) and a
    compiled step (SGEMM 'illegal value' and a segfault before)."""
    run = _run("""
        import numpy as np, symnet as sn
        m = sn.Sequential(sn.Linear(4, 16), sn.ReLU(), sn.Linear(16, 3))
        try:
            m[0].weight.data = np.zeros((2, 4), np.float32)
        except ValueError as e:
            print("refused:", e)
        X = np.ones((5, 4), np.float32)
        step = sn.compile(m, sn.CrossEntropyLoss(), sn.optim.SGD(m.parameters(), lr=0.1))
        print("finite:", bool(np.isfinite(m(X)).all()), step(X, np.arange(5) % 3) > 0)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "refused: Linear(4, 16).weight: data of shape (2, 4) given" in run.stdout
    assert "finite: True True" in run.stdout
    assert "SGEMM" not in run.stderr


@pytest.mark.parametrize("value, error", [
    (np.zeros((2, 4), np.float32), ValueError),
    (np.zeros((4, 16), np.float32), ValueError),  # the transpose: same size, wrong shape
    (np.zeros(64, np.float32), ValueError),
    (np.array([["a"] * 4] * 16), TypeError),
    ([[1.0, 2.0], [3.0]], ValueError),
])
def test_wrong_data_is_refused_and_nothing_changes(value, error):
    m = sn.Sequential(sn.Linear(4, 16))
    before = _bytes(m)
    with pytest.raises(error, match=r"Linear\(4, 16\)\.weight"):
        m[0].weight.data = value
    assert _bytes(m) == before


def test_data_of_another_dtype_or_layout_is_adopted_as_a_converted_copy():
    """float64 or a transposed view: stored as C-contiguous float32, the values kept; the
    model's output equals numpy's float64 forward of the same values."""
    m = sn.Sequential(sn.Linear(3, 4))
    values = np.arange(12, dtype=np.float64).reshape(3, 4).T / 10  # F-ordered (4, 3)
    m[0].weight.data = values
    w = m[0].weight.data
    assert w.dtype == np.float32 and w.flags.c_contiguous and w.shape == (4, 3)
    X = np.random.default_rng(0).random((5, 3))
    expected = X @ values.T + m[0].bias.data.astype(np.float64)
    np.testing.assert_allclose(m(X.astype(np.float32)), expected, rtol=1e-5)


def test_an_array_reshaped_in_place_is_refused_before_any_kernel():
    """``p.data.shape = …`` changes the stored array behind the parameter's back: every path
    into a kernel (model(X), loss.backward, opt.step, the fused step) refuses it by name."""
    m = sn.Sequential(sn.Linear(4, 16), sn.ReLU(), sn.Linear(16, 3))
    opt = sn.optim.SGD(m.parameters(), lr=0.1)
    step = sn.compile(m, sn.CrossEntropyLoss(), opt)
    X, y = np.ones((5, 4), np.float32), np.arange(5) % 3
    step(X, y)
    out = m(X)
    sn.CrossEntropyLoss()(out, y).backward()
    m[0].weight.data.shape = (16 * 4,)
    for call in (lambda: m(X), lambda: step(X, y), opt.step):
        with pytest.raises(ValueError, match=r"Linear\(4, 16\)\.weight: its array was changed"):
            call()


def test_a_gradient_or_optimizer_state_of_the_wrong_shape_is_refused():
    m = sn.Sequential(sn.Linear(4, 3))
    opt = sn.optim.Adam(m.parameters(), lr=0.1)
    before = _bytes(m, opt)
    m[0].weight.grad = np.ones((3, 3))
    with pytest.raises(ValueError, match=r"Linear\(4, 3\)\.weight: grad of shape \(3, 3\)"):
        opt.step()
    m[0].weight.grad = np.ones((3, 4))
    opt.state[0]["m"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"state 'm' of Linear\(4, 3\)\.weight"):
        opt.step()
    with pytest.raises(ValueError, match=r"state 'm' of Linear\(4, 3\)\.weight"):
        sn.compile(m, sn.MSELoss(), opt)(np.ones((2, 4), np.float32), np.ones((2, 3)))
    opt.state[0]["m"] = np.zeros((3, 4), np.float32)
    assert _bytes(m, opt) == before


def test_a_parameter_must_hold_floats():
    with pytest.raises(TypeError, match="float32 or float64"):
        sn.Parameter(np.arange(3))


# --- 2. a module used twice ---------------------------------------------------------------

def _shared_pair(dtype=np.float64):
    """``l, tanh, l2, tanh, l`` in symnet and the same in torch (same weights)."""
    sn.manual_seed(3)
    shared, middle = sn.Linear(4, 4), sn.Linear(4, 4)
    model = sn.Sequential(shared, sn.Tanh(), middle, sn.Tanh(), shared).to(dtype)
    t_shared, t_middle = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 4).double()
    with torch.no_grad():
        for t, s in ((t_shared, shared), (t_middle, middle)):
            t.weight.copy_(torch.from_numpy(s.weight.data.astype(np.float64)))
            t.bias.copy_(torch.from_numpy(s.bias.data.astype(np.float64)))
    twin = torch.nn.Sequential(t_shared, torch.nn.Tanh(), t_middle, torch.nn.Tanh(), t_shared)
    return model, twin


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 4, n)


def test_names_and_keys_follow_torch():
    model, twin = _shared_pair()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in twin.named_parameters()]
    assert list(model.state_dict()) == list(twin.state_dict())
    assert len(model.parameters()) == len(list(twin.parameters())) == 4


def test_eager_gradients_are_the_sum_over_uses_as_torch():
    model, twin = _shared_pair()
    X, y = _batch()
    sn.CrossEntropyLoss()(model(X), y).backward()
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-14,
                                   err_msg=name)


@pytest.mark.parametrize("make, make_torch", [
    (lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda p: sn.optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
], ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_training_updates_each_shared_parameter_once_as_torch(make, make_torch, fused):
    model, twin = _shared_pair()
    opt, t_opt = make(model.parameters()), make_torch(twin.parameters())
    step = sn.compile(model, sn.CrossEntropyLoss(), opt) if fused else None
    for k in range(5):
        X, y = _batch(seed=k)
        if fused:
            value = step(X, y)
        else:
            opt.zero_grad()
            loss = sn.CrossEntropyLoss()(model(X), y)
            loss.backward()
            opt.step()
            value = loss.item()
        t_opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)),
                                                   torch.from_numpy(y))
        t_loss.backward()
        t_opt.step()
        assert abs(value - t_loss.item()) < 1e-12
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, err_msg=name)


def test_the_derivation_prints_and_proves_the_sum():
    model, _ = _shared_pair()
    d = sn.derive(model, sn.CrossEntropyLoss())
    text = str(d)
    assert "dW1 = dZ1·Xᵀ + dZ3·A2ᵀ" in text and "db1 = dZ1·1 + dZ3·1" in text
    assert "Z3 = W1·A2 + b1·1ᵀ" in text and "W3" not in text
    assert d.verify()  # against sympy.diff of the explicit scalar loss
    assert d.gradcheck()


def test_one_process_distributed_step_sums_the_uses_as_torch():
    from symnet.backends.mpi import DistributedStep

    model, twin = _shared_pair()
    step = DistributedStep(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(),
                                                                      lr=0.1))
    t_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    X, y = _batch()
    step(X, y)
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    t_opt.step()
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, err_msg=name)


def test_sharing_is_part_of_the_compiled_step_key():
    """Two models with the same layers, one sharing: each gets the kernel for its graph."""
    a, b = sn.Linear(4, 4), sn.Linear(4, 4)
    shared = sn.Sequential(a, sn.Tanh(), a)
    separate = sn.Sequential(b, sn.Tanh(), sn.Linear(4, 4))
    s1 = sn.compile(shared, sn.MSELoss(), sn.optim.SGD(shared.parameters(), lr=0.1))
    s2 = sn.compile(separate, sn.MSELoss(), sn.optim.SGD(separate.parameters(), lr=0.1))
    assert s1.unit is not s2.unit
    assert set(s1.unit.params) == {"W1", "b1"} and set(s2.unit.params) == {"W1", "b1", "W2",
                                                                           "b2"}


# --- 3. hyperparameters and NaN -----------------------------------------------------------

BAD = [  # (symnet's call, torch's call) with the same arguments
    ("SGD", dict(lr=-0.1)), ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1.0)), ("SGD", dict(lr=0.1, nesterov=True)),
    ("Adam", dict(lr=-1e-3)), ("Adam", dict(lr=float("nan"))),
    ("Adam", dict(betas=(1.0, 0.9))), ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(eps=-1e-8)), ("Adam", dict(weight_decay=-0.1)),
    ("AdamW", dict(betas=(0.9, 1.5))),
]


@pytest.mark.parametrize("name, kwargs", BAD, ids=[f"{n}-{k}" for n, k in BAD])
def test_hyperparameters_torch_refuses_are_refused_with_its_message(name, kwargs):
    with pytest.raises(ValueError) as expected:
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError) as got:
        getattr(sn.optim, name)(sn.Linear(2, 1).parameters(), **kwargs)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=float("nan"))), ("SGD", dict(lr=float("inf"))),
    ("Adam", dict(eps=0.0)), ("Adam", dict(betas=(float("nan"), 0.9))),
    ("SGD", dict(lr=0.1, momentum=float("nan"))),
])
def test_non_finite_or_zero_eps_hyperparameters_are_refused(name, kwargs):
    """Values torch accepts but that can only write NaN into the weights."""
    with pytest.raises(ValueError, match="Invalid"):
        getattr(sn.optim, name)(sn.Linear(2, 1).parameters(), **kwargs)


def test_param_groups_lr_changes_the_next_step_as_in_torch():
    model, twin = _shared_pair()
    opt, t_opt = sn.optim.Adam(model.parameters(), lr=0.01), torch.optim.Adam(
        twin.parameters(), lr=0.01)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    for k, lr in enumerate((0.01, 0.0, 0.05)):
        opt.param_groups[0]["lr"] = lr
        t_opt.param_groups[0]["lr"] = lr
        X, y = _batch(seed=k)
        before = _bytes(model)
        step(X, y)
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)),
                                          torch.from_numpy(y)).backward()
        t_opt.step()
        assert (_bytes(model) == before) == (lr == 0.0)
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, err_msg=name)


def test_unknown_attributes_and_bad_or_structural_changes_are_refused():
    opt = sn.optim.SGD(sn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(AttributeError, match=r"param_groups\[0\]\['lr'\]"):
        opt.lr = 0
    with pytest.raises(AttributeError, match="has no attribute 'momentun'"):
        opt.momentun = 0.9
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="changes the update's equations"):
        opt.param_groups[0]["momentum"] = 0.9  # no momentum buffer was built
    with pytest.raises(KeyError, match="no hyperparameter 'betas'"):
        opt.defaults["betas"] = (0.9, 0.99)
    assert opt.defaults == {"lr": 0.1, "momentum": 0, "dampening": 0, "weight_decay": 0,
                            "nesterov": False}
    opt.param_groups[0]["initial_lr"] = 0.1  # a scheduler's own key is kept
    assert opt.param_groups[0]["initial_lr"] == 0.1


def test_tampered_optimizer_state_is_refused_and_nothing_changes():
    m = sn.Sequential(sn.Linear(2, 1))
    opt = sn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    state = opt.state_dict()
    before = _bytes(m, opt)
    for change, error in ((dict(defaults={**state["defaults"], "momentum": 0}), ValueError),
                          (dict(defaults={**state["defaults"], "lr": -1}), ValueError),
                          (dict(defaults={"lr": 0.1}), ValueError),
                          (dict(step=0.5), ValueError)):
        with pytest.raises(error):
            opt.load_state_dict({**state, **change})
        assert _bytes(m, opt) == before and opt.defaults == state["defaults"]


def _nan_model():
    """√ of a pre-activation that goes negative: NaN in the forward pass."""
    x = sp.Symbol("x", real=True)
    sn.manual_seed(0)
    return sn.Sequential(sn.Linear(3, 4), sn.Activation("root", sp.sqrt(x), x),
                         sn.Linear(4, 2))


def test_by_default_the_fused_step_and_opt_step_refuse_nan():
    X, Y = -np.ones((4, 3), np.float32) * 10, np.zeros((4, 2), np.float32)
    for fused in (True, False):
        model = _nan_model()
        opt = sn.optim.Adam(model.parameters(), lr=0.1)
        before = _bytes(model, opt)
        with pytest.raises(FloatingPointError, match="left unchanged"):
            if fused:
                sn.compile(model, sn.MSELoss(), opt)(X, Y)
            else:
                sn.MSELoss()(model(X), Y).backward()
                opt.step()
        assert _bytes(model, opt) == before


# --- 10. messages that say what went wrong ------------------------------------------------

def test_bce_without_a_sigmoid_says_the_prediction_left_zero_one():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 1))
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    step = sn.compile(model, sn.BCELoss(), opt)
    X = np.full((4, 3), 5.0, np.float32) * np.sign(model[0].weight.data)  # output ≫ 1
    with pytest.raises(FloatingPointError, match=r"needs predictions in \[0.0, 1.0\].*"
                       r"sn.Sigmoid\(\)") as error:
        step(X, np.ones((4, 1), np.float32))
    assert "learning rate" not in str(error.value)


def test_a_distributed_step_says_so_too():
    """One process: the range is reduced over the ranks' shards, here one."""
    from symnet.backends.mpi import DistributedStep

    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 1))
    step = DistributedStep(model, sn.BCELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    X = np.full((4, 3), 5.0, np.float32) * np.sign(model[0].weight.data)
    before = _bytes(model)
    with pytest.raises(FloatingPointError, match=r"needs predictions in \[0.0, 1.0\]"):
        step(X, np.ones((4, 1), np.float32))
    assert _bytes(model) == before


def test_a_mixed_dtype_model_names_its_layers():
    model = sn.Sequential(sn.Linear(2, 3), sn.Tanh(), sn.Linear(3, 1, dtype=np.float64))
    pattern = r"0\.weight, 0\.bias float32; 2\.weight, 2\.bias float64.*model\.to"
    with pytest.raises(TypeError, match=pattern):
        sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=pattern):
        model(np.ones((2, 2), np.float32))
    model.to(np.float64)
    assert model(np.ones((2, 2))).shape == (2, 1)
