"""An MLP training step: 784-512-256-10, ReLU, cross-entropy, batch 128, float32, SGD (lr 0.01).

One step is the forward pass, the gradients of the mean cross-entropy w.r.t. all six
parameters, and the SGD update in place. Every system starts from the same weights (PyTorch's
default initialisation, drawn by NumPy from one seed) and the same batch; the check compares the
loss and the gradients at those weights. nnflow updates through ``nnflow.optim.SGD``, torch
through ``torch.optim.SGD``, JAX inside the jitted step (parameters donated), HIPS autograd
and hand-written NumPy with ``p -= lr * g`` (in place, into buffers, for ``numpy-best``).
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Config, f64, nnflow_device, setup_jax, setup_torch, uniform

SHAPES = {
    "full": {"sizes": (784, 512, 256, 10), "batch": 128},
    "tiny": {"sizes": (20, 16, 12, 10), "batch": 8},
}
LR = 0.01
NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")


def data(cfg: Config):
    """``(params, x, y)``: ``[W1, b1, W2, b2, W3, b3]`` (PyTorch's layout), a batch, labels."""
    s = cfg.pick(SHAPES)
    rng = np.random.default_rng(0)
    params = []
    for n_in, n_out in zip(s["sizes"][:-1], s["sizes"][1:], strict=True):
        params += [
            uniform(rng, (n_out, n_in), n_in, np.float32),
            uniform(rng, (n_out,), n_in, np.float32),
        ]
    x = rng.standard_normal((s["batch"], s["sizes"][0])).astype(np.float32)
    y = rng.integers(0, s["sizes"][-1], s["batch"])
    return params, x, y


def numpy_naive(params, x, y):
    """Loss and gradients, hand-written as plain NumPy expressions (allocating)."""
    W1, b1, W2, b2, W3, b3 = params
    n, rows = len(y), np.arange(len(y))
    a1 = x @ W1.T + b1
    h1 = np.maximum(a1, 0)
    a2 = h1 @ W2.T + b2
    h2 = np.maximum(a2, 0)
    z = h2 @ W3.T + b3
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) + m[:, 0] - z[rows, y])
    dz = e / s
    dz[rows, y] -= 1
    dz /= n
    dh2 = (dz @ W3) * (a2 > 0)
    dh1 = (dh2 @ W2) * (a1 > 0)
    grads = [dh1.T @ x, dh1.sum(0), dh2.T @ h1, dh2.sum(0), dz.T @ h2, dz.sum(0)]
    return loss, grads


class NumpyBest:
    """The step hand-written in place: every array is a buffer made once, every op ``out=``."""

    def __init__(self, params, x, y):
        self.params, self.x, self.y = params, x, y
        self.rows = np.arange(len(y))
        n, f = x.shape[0], np.float32
        W1, _, W2, _, W3, _ = params
        self.h1, self.h2, self.z = (np.empty((n, W.shape[0]), f) for W in (W1, W2, W3))
        self.d1, self.d2 = np.empty_like(self.h1), np.empty_like(self.h2)
        self.m1, self.m2 = np.empty(self.h1.shape, bool), np.empty(self.h2.shape, bool)
        self.mx, self.s = np.empty((n, 1), f), np.empty((n, 1), f)
        self.grads = [np.empty_like(p) for p in params]

    def grad(self):
        """Loss and gradients (the gradients are the object's buffers)."""
        (W1, b1, W2, b2, W3, b3), x, y, rows = self.params, self.x, self.y, self.rows
        h1, h2, z, d1, d2, m1, m2, mx, s = (
            self.h1,
            self.h2,
            self.z,
            self.d1,
            self.d2,
            self.m1,
            self.m2,
            self.mx,
            self.s,
        )
        gW1, gb1, gW2, gb2, gW3, gb3 = self.grads
        np.matmul(x, W1.T, out=h1)
        np.add(h1, b1, out=h1)
        np.maximum(h1, 0, out=h1)
        np.matmul(h1, W2.T, out=h2)
        np.add(h2, b2, out=h2)
        np.maximum(h2, 0, out=h2)
        np.matmul(h2, W3.T, out=z)
        np.add(z, b3, out=z)
        np.max(z, axis=1, keepdims=True, out=mx)
        np.subtract(z, mx, out=z)
        picked = z[rows, y]
        np.exp(z, out=z)
        np.sum(z, axis=1, keepdims=True, out=s)
        loss = np.mean(np.log(s)) - np.mean(picked)
        np.divide(z, s, out=z)  # softmax: the gradient of the loss w.r.t. the logits ...
        z[rows, y] -= 1  # ... minus the one-hot labels ...
        np.multiply(z, 1.0 / len(y), out=z)  # ... over the batch
        np.matmul(z.T, h2, out=gW3)
        np.sum(z, axis=0, out=gb3)
        np.matmul(z, W3, out=d2)
        np.greater(h2, 0, out=m2)
        np.multiply(d2, m2, out=d2)
        np.matmul(d2.T, h1, out=gW2)
        np.sum(d2, axis=0, out=gb2)
        np.matmul(d2, W2, out=d1)
        np.greater(h1, 0, out=m1)
        np.multiply(d1, m1, out=d1)
        np.matmul(d1.T, x, out=gW1)
        np.sum(d1, axis=0, out=gb1)
        return loss, self.grads

    def step(self):
        """One training step: gradients, then ``p -= lr * g`` in place."""
        loss, grads = self.grad()
        for p, g in zip(self.params, grads, strict=True):
            np.multiply(g, LR, out=g)
            np.subtract(p, g, out=p)
        return loss


def _named(loss, grads) -> dict:
    return {"loss": f64(loss), **{k: f64(g) for k, g in zip(NAMES, grads, strict=True)}}


def nnflow_model(params):
    """``Chain(Linear, Linear, Linear)`` holding ``params`` (copies)."""
    from nnflow.layers import Chain, Linear

    sizes = [params[0].shape[1]] + [W.shape[0] for W in params[::2]]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layer = Linear(n_in, n_out, activation="relu" if i < len(sizes) - 2 else None)
        layer.weight, layer.bias = params[2 * i].copy(), params[2 * i + 1].copy()
        layers.append(layer)
    return Chain(*layers)


def nnflow_training(
    cfg: Config,
    compiled: bool,
    model,
    loss,
    batch,
    wrt_names: dict,
    update: bool = True,
    lr: float = LR,
) -> Bench:
    """Gradients by ``ad.grad``/``ad.compile_grad``, then (``update``) an ``nnflow.optim.SGD``
    step; ``wrt_names`` maps the check's names to the model's parameter paths."""
    from nnflow import ad
    from nnflow.optim import SGD

    model.to(cfg.device)
    batch, sync = nnflow_device(cfg, *batch)
    grad = ad.compile_grad(loss, wrt=(0,)) if compiled else None
    opt = SGD(model, lr=lr)

    def run():
        return ad.grad(loss, model, *batch, wrt=(0,)) if grad is None else grad(model, *batch)

    def step():
        value, g = run()
        if update:
            opt.step(g[0])
        sync()
        return value

    def check():
        value, g = run()
        return {"loss": f64(value), **{k: f64(g[0][p]) for k, p in wrt_names.items()}}

    return Bench(step, check)


def torch_training(
    cfg: Config, model, loss_fn, batch, names: dict, update: bool = True, lr: float = LR
) -> Bench:
    """``loss.backward()``, then (``update``) ``torch.optim.SGD`` on ``model`` (already holding
    the weights); ``names`` maps the check's names to ``model.named_parameters()``."""
    torch, dev, sync = setup_torch(cfg)
    model.to(dev)
    batch = [torch.from_numpy(a).to(dev) for a in batch]
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, *batch)
        loss.backward()
        return loss

    def step():
        loss = run()
        if update:
            opt.step()
        sync()
        return loss

    def check():
        loss = run()
        params = dict(model.named_parameters())
        return {"loss": f64(loss), **{k: f64(params[t].grad) for k, t in names.items()}}

    return Bench(step, check)


def jax_training(
    cfg: Config, loss, params, batch, names, update: bool = True, lr: float = LR
) -> Bench:
    """A jitted ``value_and_grad`` plus (``update``) SGD, the parameters donated (updated in
    place); ``loss(jnp, jax, params, *batch)``."""
    jax, jnp, put = setup_jax(cfg, x64=False)
    state = {"p": [put(p) for p in params]}
    batch = [put(a) for a in batch]
    vg = jax.value_and_grad(lambda p, *b: loss(jnp, jax, p, *b))

    @jax.jit
    def grads(p, *b):
        return vg(p, *b)

    def train(p, *b):
        value, g = vg(p, *b)
        return [a - lr * d for a, d in zip(p, g, strict=True)], value

    train = jax.jit(train, donate_argnums=0)

    def step():
        if not update:
            return jax.block_until_ready(grads(state["p"], *batch))
        state["p"], value = train(state["p"], *batch)
        return jax.block_until_ready(value)

    def check():
        value, g = grads(state["p"], *batch)
        return {"loss": f64(value), **{k: f64(d) for k, d in zip(names, g, strict=True)}}

    return Bench(step, check)


def _jax_loss(jnp, jax, p, x, y):
    W1, b1, W2, b2, W3, b3 = p
    h = jax.nn.relu(x @ W1.T + b1)
    h = jax.nn.relu(h @ W2.T + b2)
    logp = jax.nn.log_softmax(h @ W3.T + b3)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _autograd_loss(p, x, y):
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    W1, b1, W2, b2, W3, b3 = p
    h = anp.maximum(x @ W1.T + b1, 0)
    h = anp.maximum(h @ W2.T + b2, 0)
    z = h @ W3.T + b3
    return anp.mean(logsumexp(z, axis=1) - z[anp.arange(len(y)), y])


def build(system: str, cfg: Config) -> Bench:
    """One system's training step."""
    params, x, y = data(cfg)
    if system == "numpy-naive":

        def step():
            loss, grads = numpy_naive(params, x, y)
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
            return loss

        return Bench(step, lambda: _named(*numpy_naive(params, x, y)))
    if system == "numpy-best":
        best = NumpyBest(params, x, y)
        return Bench(best.step, lambda: _named(*best.grad()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import losses

        def loss(model, x, y):
            return losses.cross_entropy(model(x), y)

        paths = {
            n: ("layers", i // 2, "weight" if i % 2 == 0 else "bias") for i, n in enumerate(NAMES)
        }
        model = nnflow_model(params)
        return nnflow_training(cfg, system == "nnflow-compiled", model, loss, (x, y), paths)
    if system == "torch":
        import torch

        nn = torch.nn
        layers = [nn.Linear(W.shape[1], W.shape[0]) for W in params[::2]]
        with torch.no_grad():
            for i, layer in enumerate(layers):
                layer.weight.copy_(torch.from_numpy(params[2 * i]))
                layer.bias.copy_(torch.from_numpy(params[2 * i + 1]))
        model = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
        names = {
            n: f"{2 * (i // 2)}.{'weight' if i % 2 == 0 else 'bias'}" for i, n in enumerate(NAMES)
        }

        def loss_fn(model, x, y):
            return nn.functional.cross_entropy(model(x), y)

        return torch_training(cfg, model, loss_fn, (x, y), names)
    if system == "jax":
        return jax_training(cfg, _jax_loss, params, (x, y), NAMES)
    if system == "autograd":
        import autograd

        vg = autograd.value_and_grad(_autograd_loss)

        def step():
            loss, grads = vg(params, x, y)
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
            return loss

        return Bench(step, lambda: _named(*vg(params, x, y)))
    raise ValueError(f"mlp: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
