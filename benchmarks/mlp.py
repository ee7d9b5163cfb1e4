"""The benchmarked networks, built once for every benchmark script: an MLP of ReLU layers
(``sizes`` input first) in symnet, seeded, and the same network in PyTorch with symnet's
initial weights, so both sides start from identical parameters.

Example:
    >>> model = symnet_mlp((4, 3, 2))
    >>> [tuple(p.shape) for p in model.parameters()]
    [(3, 4), (3,), (2, 3), (2,)]
"""

from __future__ import annotations

#: the learning rates every benchmark uses
LR = {"SGD": 0.01, "Adam": 1e-3}


def symnet_mlp(sizes, seed: int = 0):
    """``Linear, ReLU, …, Linear`` in symnet, initialised from ``sn.manual_seed(seed)``."""
    import symnet as sn

    sn.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [sn.Linear(a, b), sn.ReLU()]
    return sn.Sequential(*layers[:-1])


def symnet_optimizer(optimizer: str, params):
    """``"SGD"`` or ``"Adam"`` over ``params``, at the benchmarks' learning rate."""
    import symnet as sn

    return getattr(sn.optim, optimizer)(params, lr=LR[optimizer])


def torch_mlp(torch, sizes, sn_model, optimizer: str, device=None):
    """The same MLP in PyTorch with ``sn_model``'s weights (on ``device``), and its optimizer."""
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    sn_linear = [m for m in sn_model.layers() if type(m).__name__ == "Linear"]
    th_linear = [m for m in model if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for s, t in zip(sn_linear, th_linear):
            t.weight.copy_(torch.from_numpy(s.weight.data))
            t.bias.copy_(torch.from_numpy(s.bias.data))
    if device is not None:
        model.to(device)
    return model, getattr(torch.optim, optimizer)(model.parameters(), lr=LR[optimizer])
