"""Compiled gradients stay finite where the true derivative is: large pre-activations, where
eᶻ overflows (z > 88 in float32, z > 709 in float64), must not turn a gradient into NaN.

SiLU′ printed as (1 + z + eᶻ)/(4·cosh²(z/2)) and softplus′ as eᶻ/(eᶻ + 1) were ∞/∞ there.
Reference: PyTorch autograd in float64 on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import symnet as sn

torch = pytest.importorskip("torch")

ACTIVATIONS = ["ReLU", "Sigmoid", "Tanh", "SiLU", "GELU", "Softplus"]
POINTS = {np.float32: [-100.0, -89.0, -30.0, 0.5, 30.0, 89.0, 100.0],
          np.float64: [-800.0, -710.0, -30.0, 0.5, 30.0, 710.0, 800.0]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gradients_stay_finite_and_right_at_large_inputs(name, dtype, torch_mirror):
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(1, 1, dtype=dtype), getattr(sn, name)(),
                          sn.Linear(1, 1, dtype=dtype))
    state = model.state_dict()
    state["0.weight"][:], state["0.bias"][:] = 1.0, 0.0  # pre-activations = the inputs
    model.load_state_dict(state)
    X = np.array(POINTS[dtype], dtype).reshape(-1, 1)
    target = np.zeros_like(X)
    sn.MSELoss(reduction="sum")(model(X), target).backward()

    reference = torch_mirror(model.to(np.float64))
    loss = torch.nn.functional.mse_loss(reference(torch.tensor(X, dtype=torch.float64)),
                                        torch.tensor(target, dtype=torch.float64),
                                        reduction="sum")
    loss.backward()
    for key, parameter in model.named_parameters():
        expected = dict(reference.named_parameters())[key].grad.numpy()
        assert np.isfinite(parameter.grad).all(), (key, parameter.grad)
        np.testing.assert_allclose(parameter.grad, expected,
                                   rtol=1e-4 if dtype == np.float32 else 1e-9, err_msg=key)
