"""Shared test setup: a private kernel cache for the session, and small numeric helpers.

Generated kernels go to ``$SYMNET_CACHE_DIR``; unless the caller chose one, the session uses a
fresh temporary folder, so tests never write to ``~/.cache`` (and never reuse stale entries).
It is set here, at import, before any test module imports symnet or codegen.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

_OWN_CACHE = "SYMNET_CACHE_DIR" not in os.environ
os.environ.setdefault("SYMNET_CACHE_DIR", tempfile.mkdtemp(prefix="symnet-test-cache-"))


@pytest.fixture(scope="session", autouse=True)
def symnet_cache_dir():
    """The session's kernel cache folder; removed at the end if this session created it."""
    path = os.environ["SYMNET_CACHE_DIR"]
    yield path
    if _OWN_CACHE:
        shutil.rmtree(path, ignore_errors=True)


def assert_close(actual, expected, rtol: float, what: str = "") -> None:
    """Equal to ``rtol`` relative to the size of ``expected`` (its largest entry).

    Entry-wise relative error is meaningless for entries that are zero or cancel (a ReLU's
    dead units); scaling by the array's magnitude keeps the check strict everywhere else.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


@pytest.fixture(name="assert_close")
def assert_close_fixture():
    return assert_close


def central_difference(parameter, loss, h: float) -> np.ndarray:
    """d loss / d parameter by float64 central differences: each entry of the parameter's
    values is moved by ±h in place, ``loss()`` evaluated, and the entry restored."""
    numeric = np.zeros_like(parameter.data)
    for index in np.ndindex(parameter.shape):
        saved = parameter.data[index]
        parameter.data[index] = saved + h
        plus = loss()
        parameter.data[index] = saved - h
        minus = loss()
        parameter.data[index] = saved
        numeric[index] = (plus - minus) / (2 * h)
    return numeric


@pytest.fixture(name="central_difference", scope="session")  # session: usable under Hypothesis
def central_difference_fixture():
    return central_difference


_TORCH_ACTIVATIONS = {"ReLU": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "SiLU": "SiLU",
                      "GELU": "GELU", "Softplus": "Softplus"}


def torch_mirror(model, custom: dict | None = None):
    """The same network in PyTorch (float64), with the symnet model's weights copied.

    ``custom`` maps a user activation's name to a torch function of one tensor.
    """
    torch = pytest.importorskip("torch")
    import symnet as sn

    class Lambda(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, z):
            return self.fn(z)

    def convert(m):
        kind = type(m).__name__
        if isinstance(m, sn.Sequential):
            return torch.nn.Sequential(*(convert(child) for child in m.children()))
        if isinstance(m, sn.Linear):
            return torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                   dtype=torch.float64)
        if isinstance(m, sn.LeakyReLU):
            return torch.nn.LeakyReLU(m.negative_slope)
        if kind in _TORCH_ACTIVATIONS:
            return getattr(torch.nn, _TORCH_ACTIVATIONS[kind])()
        if isinstance(m, sn.Softmax):
            return torch.nn.Softmax(dim=1)
        if isinstance(m, sn.LogSoftmax):
            return torch.nn.LogSoftmax(dim=1)
        return Lambda((custom or {})[m.name])

    net = convert(model)
    net.load_state_dict({k: torch.tensor(np.asarray(v, np.float64))
                         for k, v in model.state_dict().items()})
    return net


@pytest.fixture(name="torch_mirror")
def torch_mirror_fixture():
    return torch_mirror
