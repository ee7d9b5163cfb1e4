"""symnet.backends.kernels: compiled units shared by structure, buffers allocated per batch size.

Sharing is where aliasing bugs hide: two models of one structure, two batch sizes, two
losses kept alive at once.  Every result is compared with PyTorch, never with symnet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from symnet.backends import kernels

torch = pytest.importorskip("torch")


def _model(seed: int, activation=sn.Tanh):
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(4, 6), activation(), sn.Linear(6, 3)).to(np.float64)


def _torch_forward(net, X):
    return net(torch.tensor(X)).detach().numpy()


def test_model_unit_holds_forward_and_gradients():
    unit = kernels.model_unit(_model(0), sn.CrossEntropyLoss(), np.float64)
    assert sorted(unit.functions) == ["forward", "gradients"]
    assert "def forward(" in unit.source and "def gradients(" in unit.source
    assert unit.dtype is np.float64


def test_models_of_one_structure_share_a_unit_but_not_results(torch_mirror, assert_close):
    a, b = _model(0), _model(1)
    assert kernels.model_unit(a, None, np.float64) is kernels.model_unit(b, None, np.float64)
    X = np.random.default_rng(0).standard_normal((5, 4))
    out_a = a(X)
    out_b = b(X)  # same unit, same buffers: out_a must not change
    assert_close(out_a, _torch_forward(torch_mirror(a), X), 1e-12, "model a")
    assert_close(out_b, _torch_forward(torch_mirror(b), X), 1e-12, "model b")


def test_batch_sizes_can_change_between_calls(torch_mirror, assert_close):
    model = _model(2)
    reference = torch_mirror(model)
    rng = np.random.default_rng(1)
    for batch in (5, 9, 1, 5):
        X = rng.standard_normal((batch, 4))
        assert_close(model(X), _torch_forward(reference, X), 1e-12, f"batch {batch}")


def test_losses_kept_alive_keep_their_own_gradients(torch_mirror, assert_close):
    model = _model(3)
    reference = torch_mirror(model)
    rng = np.random.default_rng(2)
    X1, X2 = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    y1, y2 = rng.integers(0, 3, 8), rng.integers(0, 3, 8)
    loss1 = sn.CrossEntropyLoss()(model(X1), y1)
    loss2 = sn.CrossEntropyLoss()(model(X2), y2)  # reuses loss1's kernel buffers
    loss1.backward()
    torch.nn.functional.cross_entropy(reference(torch.tensor(X1)), torch.tensor(y1)).backward()
    grads = dict(reference.named_parameters())
    for key, p in model.named_parameters():
        assert_close(p.grad, grads[key].grad.numpy(), 1e-10, key)
    expected2 = torch.nn.functional.cross_entropy(reference(torch.tensor(X2)), torch.tensor(y2))
    assert loss2.item() == pytest.approx(expected2.item(), rel=1e-12)


def test_output_of_an_earlier_call_is_still_a_valid_loss_input(torch_mirror):
    model = _model(4)
    reference = torch_mirror(model)
    rng = np.random.default_rng(3)
    X1, X2 = rng.standard_normal((6, 4)), rng.standard_normal((7, 4))
    out1 = model(X1)
    model(X2)
    y = rng.integers(0, 3, 6)
    value = sn.CrossEntropyLoss()(out1, y).item()
    expected = torch.nn.functional.cross_entropy(reference(torch.tensor(X1)), torch.tensor(y))
    assert value == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("slope", [0.2, 0.3])
def test_structure_distinguishes_activation_parameters(slope, torch_mirror, assert_close):
    model = _model(5, lambda: sn.LeakyReLU(slope))
    X = np.random.default_rng(4).standard_normal((10, 4)) * 3
    assert_close(model(X), _torch_forward(torch_mirror(model), X), 1e-12, f"slope {slope}")


def test_structure_distinguishes_user_activations_of_one_name(torch_mirror, assert_close):
    z = sp.Symbol("z")
    X = np.random.default_rng(5).standard_normal((6, 4))
    for expr, fn in ((z**2, lambda t: t**2), (z**3, lambda t: t**3)):
        sn.manual_seed(6)
        model = sn.Sequential(sn.Linear(4, 3), sn.Activation("power", expr, z)).to(np.float64)
        expected = _torch_forward(torch_mirror(model, {"power": fn}), X)
        assert_close(model(X), expected, 1e-12, str(expr))


def test_structure_distinguishes_reductions(torch_mirror):
    model = _model(7)
    reference = torch_mirror(model)
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    for reduction in ("mean", "sum", "mean"):
        value = sn.CrossEntropyLoss(reduction=reduction)(model(X), y).item()
        expected = torch.nn.functional.cross_entropy(reference(torch.tensor(X)),
                                                     torch.tensor(y), reduction=reduction)
        assert value == pytest.approx(expected.item(), rel=1e-12), reduction


def test_bias_free_layers_compile_apart(torch_mirror, assert_close):
    sn.manual_seed(8)
    with_bias = sn.Sequential(sn.Linear(4, 3)).to(np.float64)
    without = sn.Sequential(sn.Linear(4, 3, bias=False)).to(np.float64)
    X = np.random.default_rng(7).standard_normal((5, 4))
    for model in (with_bias, without):
        assert_close(model(X), _torch_forward(torch_mirror(model), X), 1e-12, repr(model))


def test_another_process_loads_the_cached_unit(tmp_path, monkeypatch):
    """A second process finds this process's cache entry and Numba's machine code for it."""
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    build = textwrap.dedent("""
        import json, numpy as np, symnet as sn
        sn.manual_seed(11)
        model = sn.Sequential(sn.Linear(3, 5), sn.Softplus(), sn.Linear(5, 2)).to(np.float64)
        X = np.linspace(-2.0, 2.0, 12).reshape(4, 3)
        out = model(X)
    """)
    scope: dict = {}
    exec(build, scope)  # this process: a structure no other test compiles, so written here
    files = sorted(tmp_path.glob("*.py"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    script = build + textwrap.dedent("""
        unit = sn.backends.kernels.model_unit(model, None, np.float64)
        hits = sum(unit.functions["forward"].stats.cache_hits.values())
        print(json.dumps({"out": out.tolist(), "hits": hits}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "SYMNET_CACHE_DIR": str(tmp_path)}, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    np.testing.assert_array_equal(np.array(report["out"]), scope["out"])
    assert report["hits"] >= 1  # machine code loaded, not compiled again
    assert sorted(tmp_path.glob("*.py")) == files and files[0].stat().st_mtime_ns == stamp
    W1, b1, W2, b2 = (p.data for p in scope["model"].parameters())
    expected = np.logaddexp(0.0, scope["X"] @ W1.T + b1) @ W2.T + b2
    np.testing.assert_allclose(scope["out"], expected, rtol=1e-12)
