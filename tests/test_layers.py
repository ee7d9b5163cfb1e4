"""Layers as formulas (own forward, residual paths, LayerNorm, RMSNorm, Dropout, Identity)
against PyTorch: forward, every gradient, fused steps, keys, printing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symnet as sn

torch = pytest.importorskip("torch")
F64 = np.float64


class Block(sn.Module):
    """The issue's residual block: x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, d, hidden):
        super().__init__()
        self.norm = sn.LayerNorm(d, dtype=F64)
        self.fc1 = sn.Linear(d, hidden, dtype=F64)
        self.fc2 = sn.Linear(hidden, d, dtype=F64)

    def forward(self, x):
        return x + self.fc2(sn.gelu(self.fc1(self.norm(x))))


class GLU(sn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        rng = np.random.default_rng(3)
        self.W = sn.Parameter(rng.uniform(-0.5, 0.5, (d_out, d_in)))
        self.V = sn.Parameter(rng.uniform(-0.5, 0.5, (d_out, d_in)))

    def forward(self, X):
        return sn.sigmoid(self.W @ X) * (self.V @ X)


class TorchBlock(torch.nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, hidden)
        self.fc2 = torch.nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class TorchGLU(torch.nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.W = torch.nn.Parameter(torch.zeros(d_out, d_in))
        self.V = torch.nn.Parameter(torch.zeros(d_out, d_in))

    def forward(self, x):
        return torch.sigmoid(x @ self.W.T) * (x @ self.V.T)


class MaskedDropout(torch.nn.Module):
    """torch's dropout with a given mask (symnet's `last_mask`), for exact comparison."""

    def __init__(self, layer: sn.Dropout):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        if not self.training or self.layer.p == 0:
            return x
        return x * torch.tensor(self.layer.last_mask) / (1 - self.layer.p)


def _pair(name):
    """(symnet model, equivalent torch model) with the same parameters."""
    sn.manual_seed(0)
    d = 5
    head = [sn.Linear(4, d, dtype=F64)]
    theads = [torch.nn.Linear(4, d)]
    layers = {
        "layernorm": (sn.LayerNorm(d, dtype=F64), torch.nn.LayerNorm(d)),
        "layernorm_no_affine": (sn.LayerNorm(d, elementwise_affine=False, dtype=F64),
                                torch.nn.LayerNorm(d, elementwise_affine=False)),
        "layernorm_no_bias": (sn.LayerNorm(d, bias=False, dtype=F64),
                              torch.nn.LayerNorm(d, bias=False)),
        "rmsnorm": (sn.RMSNorm(d, dtype=F64), torch.nn.RMSNorm(d)),
        "rmsnorm_eps": (sn.RMSNorm(d, eps=1e-3, dtype=F64), torch.nn.RMSNorm(d, eps=1e-3)),
        "identity": (sn.Identity(), torch.nn.Identity()),
        "block": (Block(d, 7), TorchBlock(d, 7)),
        "glu": (GLU(d, d), TorchGLU(d, d)),
    }
    if name == "dropout":
        drop = sn.Dropout(0.3)
        pair = (drop, MaskedDropout(drop))
    else:
        pair = layers[name]
    model = sn.Sequential(*head, pair[0], sn.Tanh(), sn.Linear(d, 3, dtype=F64))
    reference = torch.nn.Sequential(*theads, pair[1], torch.nn.Tanh(), torch.nn.Linear(d, 3))
    # symnet's initial values (the affine ones perturbed, so γ, β are really tested)
    state = {k: v + (0.1 * np.arange(v.size).reshape(v.shape) if k.startswith("1.") and
                     "norm" not in name and v.ndim == 1 else 0)
             for k, v in model.state_dict().items()}
    if name.endswith(("norm", "norm_eps", "norm_no_bias")):
        state = {k: v + 0.05 * np.arange(v.size).reshape(v.shape) for k, v in state.items()}
    model.load_state_dict(state)
    reference.double().load_state_dict({k: torch.tensor(v) for k, v in
                                        model.state_dict().items()}, strict=True)
    return model, reference


LAYERS = ["layernorm", "layernorm_no_affine", "layernorm_no_bias", "rmsnorm", "rmsnorm_eps",
          "identity", "block", "glu", "dropout"]


def _torch_grads(reference, X, y):
    reference.zero_grad()
    out = reference(torch.tensor(X))
    loss = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    loss.backward()
    return out.detach().numpy(), loss.item(), {k: p.grad.numpy()
                                                for k, p in reference.named_parameters()}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_gradients_match_torch(name, mode):
    model, reference = _pair(name)
    model.train(mode == "train"), reference.train(mode == "train")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    out = model(X)
    loss = sn.CrossEntropyLoss()(out, y)
    loss.backward()
    t_out, t_loss, t_grads = _torch_grads(reference, X, y)
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-12)
    assert float(loss) == pytest.approx(t_loss, rel=1e-10)
    for key, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, t_grads[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_dropout_draws_a_new_seeded_mask_and_is_identity_in_eval():
    sn.manual_seed(5)
    model = sn.Sequential(sn.Linear(3, 50, dtype=F64), sn.Dropout(0.4))
    X = np.ones((40, 3))
    first = model(X)
    mask = model[1].last_mask.copy()
    assert 0.45 < 1 - mask.mean() < 0.35 + 0.1 or abs((1 - mask.mean()) - 0.4) < 0.05
    np.testing.assert_allclose(first, (X @ model[0].weight.data.T + model[0].bias.data)
                               * mask / 0.6, rtol=1e-12)
    model(X)
    assert not np.array_equal(mask, model[1].last_mask)  # a fresh mask every call
    sn.manual_seed(5)
    model2 = sn.Sequential(sn.Linear(3, 50, dtype=F64), sn.Dropout(0.4))
    model2(X)
    np.testing.assert_array_equal(model2[1].last_mask, mask)  # seeded
    model.eval()
    np.testing.assert_allclose(model(X), X @ model[0].weight.data.T + model[0].bias.data)


@pytest.mark.parametrize("name", ["block", "layernorm", "rmsnorm", "dropout", "glu"])
def test_fused_adamw_steps_match_torch(name):
    model, reference = _pair(name)
    opt = sn.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    t_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    rng = np.random.default_rng(2)
    for _ in range(4):
        X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
        value = step(X, y)
        _, t_loss, _ = _torch_grads(reference, X, y)  # dropout: the step's own mask
        t_opt.step()
        assert value == pytest.approx(t_loss, rel=1e-10)
    for key, p in model.named_parameters():
        np.testing.assert_allclose(p.data, dict(reference.named_parameters())[key].detach(),
                                   rtol=1e-9, atol=1e-12, err_msg=key)


def test_keys_and_print_match_torch():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(4, 5), Block(5, 7), sn.Dropout(0.1), sn.Linear(5, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 5), TorchBlock(5, 7),
                                    torch.nn.Dropout(0.1), torch.nn.Linear(5, 3))
    assert list(model.state_dict()) == list(reference.state_dict())
    assert [k for k, _ in model.named_parameters()] == \
        [k for k, _ in reference.named_parameters()]
    assert str(model).replace("Block", "TorchBlock") == str(reference)
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    back = {k: v.numpy() for k, v in reference.state_dict().items()}
    model.load_state_dict(back)


def test_layernorm_backward_prints_step_by_step():
    d = sn.derive(sn.Sequential(sn.Linear(3, 4), sn.LayerNorm(4)), sn.MSELoss())
    names = [str(eq.lhs) for eq in d.backward]
    for gradient in ("dxhat1", "drstd1", "dvar1", "dxc1", "dmu1", "dgamma_1", "dbeta_1"):
        assert gradient in names
    text = str(d)
    assert "drstd1 = 1ᵀ·(dxhat1 ⊙ xc1)" in text
    assert all(len(line) < 80 for line in text.splitlines())


def test_verify_proves_a_layernorm_block_and_catches_a_wrong_rule(monkeypatch):
    model = sn.Sequential(sn.Linear(2, 2), sn.LayerNorm(2), sn.Linear(2, 2))
    assert sn.derive(model, sn.MSELoss()).verify(size=2, batch=2)
    from symnet.symbolic import rules

    original = rules._several_operands

    def planted(rhs, G):  # the product rule with one factor's share doubled
        found = original(rhs, G)
        return {k: sp.MatMul(2, v, evaluate=False) for k, v in found.items()}

    monkeypatch.setattr(rules, "_several_operands", planted)
    assert not sn.derive(model, sn.MSELoss()).verify(size=2, batch=2)


class Bad(sn.Module):
    def __init__(self, what):
        super().__init__()
        self.fc = sn.Linear(3, 3)
        self.what = what

    def forward(self, x):
        if self.what == "shape":
            return x.sum("samples")
        if self.what == "type":
            return x + "a"
        if self.what == "matmul":
            return self.fc.weight @ self.fc(x).T
        if self.what == "unregistered":
            return sn.Parameter(np.ones((3, 3), np.float32)) @ self.fc(x)
        return 3


@pytest.mark.parametrize("what, message", [
    ("shape", "one column per sample"), ("type", "do not support str"),
    ("matmul", "cannot multiply"), ("unregistered", "not registered"),
    ("number", "must return the symbolic value")])
def test_bad_forward_gets_a_clear_error(what, message):
    with pytest.raises((TypeError, ValueError), match=message):
        sn.derive(Bad(what), sn.MSELoss())


def test_layer_width_mismatch_names_the_layer():
    with pytest.raises(ValueError, match="LayerNorm.*receives 4 features, expected 5"):
        sn.derive(sn.Sequential(sn.Linear(3, 4), sn.LayerNorm(5)), sn.MSELoss())


def test_elementwise_of_several_operands_matches_sympy_diff():
    a, b = sp.symbols("a b")

    class Mix(sn.Module):
        def __init__(self):
            super().__init__()
            self.fc = sn.Linear(3, 3, dtype=F64)
            self.fc2 = sn.Linear(3, 3, dtype=F64)

        def forward(self, x):
            return sn.elementwise(a * sp.tanh(b) + a**2 / 4, self.fc(x), self.fc2(x))

    sn.manual_seed(0)
    model = Mix()
    X = np.random.default_rng(0).normal(size=(4, 3))
    out = model(X)
    Z1 = X @ model.fc.weight.data.T + model.fc.bias.data
    Z2 = X @ model.fc2.weight.data.T + model.fc2.bias.data
    np.testing.assert_allclose(out, Z1 * np.tanh(Z2) + Z1**2 / 4, rtol=1e-12)
    assert sn.derive(model, sn.MSELoss()).gradcheck()


@pytest.mark.parametrize("affine, track", [(True, True), (False, True), (True, False)])
def test_batchnorm_steps_and_running_statistics_match_torch(affine, track):
    sn.manual_seed(0)
    # No bias before the norm: its gradient is 0 up to rounding, which Adam would amplify
    model = sn.Sequential(sn.Linear(3, 4, bias=False, dtype=F64),
                          sn.BatchNorm1d(4, momentum=0.2, affine=affine,
                                         track_running_stats=track, dtype=F64),
                          sn.Tanh(), sn.Linear(4, 2, dtype=F64))
    reference = torch.nn.Sequential(
        torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4, momentum=0.2, affine=affine,
                                                    track_running_stats=track),
        torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    assert list(model.state_dict()) == list(reference.state_dict())
    opt = sn.optim.Adam(model.parameters(), lr=0.01)
    t_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    rng = np.random.default_rng(0)
    for _ in range(20):
        X, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
        value = step(X, y)
        _, t_loss, _ = _torch_grads(reference, X, y)
        t_opt.step()
        assert value == pytest.approx(t_loss, rel=1e-10)
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=key)
    model.eval(), reference.eval()
    X = rng.normal(size=(5, 3))
    np.testing.assert_allclose(model(X), reference(torch.tensor(X)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})


def test_batchnorm_eager_forward_updates_running_stats_once_per_call():
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(3, 4, dtype=F64), sn.BatchNorm1d(4, dtype=F64))
    reference = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    X = np.random.default_rng(0).normal(size=(6, 3))
    out = model(X)
    sn.MSELoss()(out, np.zeros((6, 4))).backward()  # the gradient kernel leaves them be
    reference(torch.tensor(X))
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=1e-12,
                                   err_msg=key)
    assert model.state_dict()["1.num_batches_tracked"].shape == ()
    with pytest.raises(ValueError, match="more than 1 sample"):
        model(X[:1])


def test_checkpoint_carries_buffers_and_resumes_bit_identically(tmp_path):
    def make():
        sn.manual_seed(0)
        model = sn.Sequential(sn.Linear(3, 4), sn.BatchNorm1d(4), sn.Dropout(0.2),
                              sn.Linear(4, 2))
        return model, sn.optim.Adam(model.parameters(), lr=0.01)

    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 2, 6))
               for _ in range(6)]
    model, opt = make()
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    for X, y in batches[:3]:
        step(X, y)
    path = tmp_path / "ck.safetensors"
    sn.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    sn.manual_seed(1)  # the masks from here on: the resumed run draws the same
    for X, y in batches[3:]:
        step(X, y)
    expected = model.state_dict()

    resumed, resumed_opt = make()
    bundle = sn.load(path)
    resumed.load_state_dict(bundle["model"])
    resumed_opt.load_state_dict(bundle["optimizer"])
    assert int(resumed.state_dict()["1.num_batches_tracked"]) == 3
    step2 = sn.compile(resumed, sn.CrossEntropyLoss(), resumed_opt)
    sn.manual_seed(1)
    for X, y in batches[3:]:
        step2(X, y)
    for key, value in resumed.state_dict().items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_residual_paths_are_joins_in_the_diagram():
    class Residual(sn.Module):
        def __init__(self):
            super().__init__()
            self.fc = sn.Linear(3, 3)

        def forward(self, x):
            return x + sn.tanh(self.fc(x))

    d = sn.derive(sn.Sequential(sn.Linear(2, 3), Residual(), sn.Linear(3, 2)), sn.MSELoss())
    edges = {tuple(part.split('[')[0].strip() for part in line.split("-->"))
             for line in d.mermaid().splitlines() if "-->" in line}
    assert {("Z1", "H1"), ("A2", "H1")} <= edges  # the forward join: x + f(x)
    assert {("dH1", "dZ1"), ("dZ2", "dZ1")} <= edges  # its gradient: the two paths add
    assert "$$" in d._repr_latex_() and "```mermaid" in d._repr_markdown_()


def test_a_custom_model_checks_its_input_width_at_its_first_layer():
    model = sn.Sequential(sn.LayerNorm(3), sn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"LayerNorm\(\(3,\).*got input with 4 features"):
        model(np.ones((2, 4), np.float32))


class Tied(sn.Module):
    """An autoencoder-style pair with tied weights: Wᵀ·tanh(W·x)."""

    def __init__(self):
        super().__init__()
        self.in_features = 4
        self.W = sn.Parameter(np.random.default_rng(4).uniform(-0.5, 0.5, (3, 4)))

    def forward(self, x):
        return self.W.T @ sn.tanh(self.W @ x) - x.mean("samples") * 0.5


def test_transposes_in_products_and_sample_means_match_torch():
    model = Tied()
    X = np.random.default_rng(5).normal(size=(6, 4))
    out = model(X)
    sn.MSELoss()(out, np.zeros((6, 4))).backward()
    W = torch.tensor(model.W.data, requires_grad=True)
    x = torch.tensor(X)
    t_out = torch.tanh(x @ W.T) @ W - 0.5 * x.mean(0, keepdim=True)
    (t_out**2).mean().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.W.grad, W.grad.numpy(), rtol=1e-10)


def test_a_transpose_outside_a_product_and_a_bad_parameter_get_clear_errors():
    class Transposed(Tied):
        def forward(self, x):
            return x + self.W.T @ (self.W @ x) + (self.W @ x).T.sum()

    class Cube(sn.Module):
        def __init__(self):
            super().__init__()
            self.in_features = 2
            self.k = sn.Parameter(np.ones((2, 2, 2)))

        def forward(self, x):
            return self.k @ x

    with pytest.raises(TypeError, match=r"transpose \(.T\) can only be a factor"):
        sn.derive(Transposed(), sn.MSELoss())
    with pytest.raises(ValueError, match=r"k: a parameter of shape \(2, 2, 2\)"):
        sn.derive(Cube(), sn.MSELoss())
