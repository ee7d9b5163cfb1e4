"""The benchmarked networks, built once for every benchmark script: an MLP of ReLU layers
(``sizes`` input first) in symnet, seeded, and the same network in PyTorch and in JAX with
symnet's initial weights, so every side starts from identical parameters.

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


def torch_step(model, opt, X, y):
    """One PyTorch eager training step as every benchmark times it: ``zero_grad``,
    cross-entropy of ``model(X)`` against integer labels ``y`` (tensors), ``backward``,
    ``opt.step()``; returns the loss tensor."""
    import torch.nn.functional as F

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        return loss

    return step


def jax_mlp(jax, sn_model, optimizer: str):
    """The same MLP in JAX with ``sn_model``'s weights, written the way JAX's docs write a
    training step: ``(params, state, update)``.

    ``params`` is a list of ``(W, b)`` pairs, W ``(out, in)`` as in symnet and torch;
    ``update(params, state, X, y) -> (params, state, loss)`` is ONE ``jax.jit`` (donating
    ``params`` and ``state``) of ``jax.value_and_grad`` of the mean cross-entropy (through
    ``jax.nn.log_softmax``, integer labels ``y``) and the parameter update: SGD
    ``p − lr·g`` (``state`` is empty), or Adam exactly as ``torch.optim.Adam``'s defaults
    (betas 0.9, 0.999, eps 1e-8, bias correction; ``state`` is ``(t, m, v)``, the step
    count ``t`` included).  ``loss`` is the loss before the update, like the other steps'.
    """
    import functools

    jnp = jax.numpy
    lr = LR[optimizer]
    linear = [m for m in sn_model.layers() if type(m).__name__ == "Linear"]
    params = [(jnp.asarray(m.weight.data), jnp.asarray(m.bias.data)) for m in linear]

    def loss_fn(params, X, y):
        h = X
        for W, b in params[:-1]:
            h = jax.nn.relu(h @ W.T + b)
        W, b = params[-1]
        logp = jax.nn.log_softmax(h @ W.T + b)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    if optimizer == "SGD":
        state = ()

        def update(params, state, X, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), state, loss
    elif optimizer == "Adam":
        b1, b2, eps = 0.9, 0.999, 1e-8
        state = (jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                 jax.tree.map(jnp.zeros_like, params))

        def update(params, state, X, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
            t, m, v = state
            t = t + 1
            m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
            v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
            tf = t.astype(jnp.float32)
            step_size = lr / (1 - b1 ** tf)
            bias_correction2_sqrt = jnp.sqrt(1 - b2 ** tf)
            params = jax.tree.map(
                lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / bias_correction2_sqrt + eps),
                params, m, v)
            return params, (t, m, v), loss
    else:
        raise ValueError(f"jax_mlp: unknown optimizer {optimizer!r}")
    return params, state, functools.partial(jax.jit, donate_argnums=(0, 1))(update)
