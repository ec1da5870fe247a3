"""A small ConvNet training step (the layers issue), float32, SGD (lr 0.01).

Batch 64 of 1x28x28 -> Conv2d 3x3 16 -> relu -> Conv2d 3x3 32 -> relu -> MaxPool2d 2 ->
Flatten -> Linear 4608 -> 10, mean cross-entropy, gradients w.r.t. the six parameters and an
in-place SGD update. nnflow uses ``nnflow.layers`` (``Conv2d``, ``MaxPool2d``, ``Linear``) and
``nnflow.optim.SGD``; torch ``nn.Sequential`` and ``torch.optim.SGD``; JAX
``lax.conv_general_dilated`` and ``lax.reduce_window`` in one jitted step; HIPS autograd an
im2col of stacked shifted slices and a batched ``matmul`` (it has no convolution). The
hand-written NumPy step keeps activations channels-last, builds the im2col matrix from
``sliding_window_view`` and runs one GEMM per direction (``numpy-best``: into buffers made once).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._common import SYSTEMS, Bench, Buffers, Config, f64, uniform
from .mlp import LR, jax_training, nnflow_training, torch_training

SHAPES = {
    "full": {"batch": 64, "size": 28, "channels": (1, 16, 32), "k": 3, "classes": 10},
    "tiny": {"batch": 2, "size": 8, "channels": (1, 2, 3), "k": 3, "classes": 10},
}
NAMES = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "linear.weight", "linear.bias")


def data(cfg: Config):
    """``(params, x, y)``: the six parameters (PyTorch layout and initialisation), a batch."""
    s = cfg.pick(SHAPES)
    c0, c1, c2 = s["channels"]
    k, pooled = s["k"], (s["size"] - 2 * (s["k"] - 1)) // 2
    rng = np.random.default_rng(0)
    params = [
        uniform(rng, (c1, c0, k, k), c0 * k * k, np.float32),
        uniform(rng, (c1,), c0 * k * k, np.float32),
        uniform(rng, (c2, c1, k, k), c1 * k * k, np.float32),
        uniform(rng, (c2,), c1 * k * k, np.float32),
        uniform(rng, (s["classes"], c2 * pooled**2), c2 * pooled**2, np.float32),
        uniform(rng, (s["classes"],), c2 * pooled**2, np.float32),
    ]
    x = rng.standard_normal((s["batch"], c0, s["size"], s["size"])).astype(np.float32)
    y = rng.integers(0, s["classes"], s["batch"])
    return params, x, y


class NumpyConvNet:
    """The step hand-written in NumPy; ``reuse``: every intermediate in a buffer made once."""

    def __init__(self, params, x, y, reuse: bool):
        self.params, self.x, self.y = params, x, y
        self.o = Buffers(reuse)

    def _conv(self, name, a, w, b):
        """``a`` (N, H, W, C) channels-last -> ``(output (N, Ho, Wo, O), im2col matrix)``."""
        o, (n, h, wd, c), (out_c, _, k, _) = self.o, a.shape, w.shape
        win = sliding_window_view(a, (k, k), axis=(1, 2))  # (N, Ho, Wo, C, k, k), a view
        cols = o(name + ".cols", win.shape, a.dtype)
        if cols is None:
            cols = win.reshape(-1, c * k * k)  # the im2col copy
        else:
            np.copyto(cols, win)
            cols = cols.reshape(-1, c * k * k)
        z = np.matmul(cols, w.reshape(out_c, -1).T, out=o(name + ".z", (len(cols), out_c), a.dtype))
        np.add(z, b, out=z)
        np.maximum(z, 0, out=z)  # relu, in place
        return z.reshape(n, h - k + 1, wd - k + 1, out_c), cols

    def grad(self):
        """Loss and the six gradients (before the update)."""
        o, (w1, b1, w2, b2, W, bl), y = self.o, self.params, self.y
        f, n, rows = np.float32, len(y), np.arange(len(y))
        a1, cols1 = self._conv("c1", self.x.transpose(0, 2, 3, 1), w1, b1)
        a2, cols2 = self._conv("c2", a1, w2, b2)
        _, h2, wd2, c2 = a2.shape
        r = a2.reshape(n, h2 // 2, 2, wd2 // 2, 2, c2)
        pooled = np.max(r, axis=(2, 4), out=o("pool", (n, h2 // 2, wd2 // 2, c2), f))
        flat = o("flat", (n, pooled.size // n), f)  # flattened channels-first, as torch does
        if flat is None:
            flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)
        else:
            np.copyto(flat.reshape(n, c2, h2 // 2, wd2 // 2), pooled.transpose(0, 3, 1, 2))
        z = np.matmul(flat, W.T, out=o("z", (n, W.shape[0]), f))
        np.add(z, bl, out=z)
        z -= z.max(axis=1, keepdims=True)
        picked = z[rows, y]
        np.exp(z, out=z)
        s = z.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s)) - np.mean(picked)
        np.divide(z, s, out=z)
        z[rows, y] -= 1
        np.multiply(z, 1.0 / n, out=z)  # z is now d loss / d logits
        gW, gbl = np.matmul(z.T, flat, out=o("gW", W.shape, f)), z.sum(axis=0)
        dflat = np.matmul(z, W, out=o("dflat", flat.shape, f))
        dpool = dflat.reshape(n, c2, h2 // 2, wd2 // 2).transpose(0, 2, 3, 1)
        mask = np.equal(r, pooled[:, :, None, :, None, :], out=o("mask", r.shape, bool))
        da2 = np.multiply(mask, dpool[:, :, None, :, None, :], out=o("da2", r.shape, f))
        da2 = da2.reshape(a2.shape)
        relu2 = np.greater(a2, 0, out=o("relu2", a2.shape, bool))
        np.multiply(da2, relu2, out=da2)  # relu; ties at 0 in a window die here too
        gw2, gb2, da1 = self._conv_back("c2", da2, cols2, w2, a1.shape)
        np.multiply(da1, np.greater(a1, 0, out=o("relu1", a1.shape, bool)), out=da1)
        gw1, gb1, _ = self._conv_back("c1", da1, cols1, w1, None)
        return loss, [gw1, gb1, gw2, gb2, gW, gbl]

    def _conv_back(self, name, dz, cols, w, in_shape):
        """Gradients of a conv from ``dz`` (N, Ho, Wo, O): weight, bias and (if asked) input."""
        o, f, (out_c, c, k, _) = self.o, np.float32, w.shape
        dz = dz.reshape(-1, out_c)
        gw = np.matmul(dz.T, cols, out=o(name + ".gw", (out_c, c * k * k), f)).reshape(w.shape)
        gb = dz.sum(axis=0)
        if in_shape is None:
            return gw, gb, None
        dcols = np.matmul(dz, w.reshape(out_c, -1), out=o(name + ".dcols", cols.shape, f))
        n, h, wd, _ = in_shape
        dcols = dcols.reshape(n, h - k + 1, wd - k + 1, c, k, k)
        da = o(name + ".da", in_shape, f)
        da = np.zeros(in_shape, f) if da is None else da
        da.fill(0)
        for i in range(k):  # col2im: one strided add per kernel offset, not per pixel
            for j in range(k):
                da[:, i : i + h - k + 1, j : j + wd - k + 1] += dcols[..., i, j]
        return gw, gb, da

    def step(self):
        """Gradients, then ``p -= lr * g`` in place."""
        loss, grads = self.grad()
        for p, g in zip(self.params, grads, strict=True):
            np.multiply(g, LR, out=g)
            np.subtract(p, g, out=p)
        return loss


def _named(loss, grads) -> dict:
    return {"loss": f64(loss), **{k: f64(g) for k, g in zip(NAMES, grads, strict=True)}}


def _jax_loss(jnp, jax, p, x, y):
    w1, b1, w2, b2, W, b = p
    dims = ("NCHW", "OIHW", "NCHW")
    conv = jax.lax.conv_general_dilated
    h = jax.nn.relu(conv(x, w1, (1, 1), "VALID", dimension_numbers=dims) + b1[:, None, None])
    h = jax.nn.relu(conv(h, w2, (1, 1), "VALID", dimension_numbers=dims) + b2[:, None, None])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    logp = jax.nn.log_softmax(h.reshape(h.shape[0], -1) @ W.T + b)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _autograd_conv(anp, x, w, b):
    n, c, h, wd = x.shape
    out_c, _, k, _ = w.shape
    ho, wo = h - k + 1, wd - k + 1
    shifted = [x[:, :, i : i + ho, j : j + wo] for i in range(k) for j in range(k)]
    cols = anp.reshape(anp.stack(shifted, axis=2), (n, c * k * k, ho * wo))
    z = anp.matmul(anp.reshape(w, (out_c, -1)), cols) + b[:, None]
    return anp.maximum(anp.reshape(z, (n, out_c, ho, wo)), 0)


def _autograd_loss(p, x, y):
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    w1, b1, w2, b2, W, b = p
    h = _autograd_conv(anp, _autograd_conv(anp, x, w1, b1), w2, b2)
    n, c, hh, ww = h.shape
    h = anp.max(anp.reshape(h, (n, c, hh // 2, 2, ww // 2, 2)), axis=(3, 5))
    z = anp.reshape(h, (n, -1)) @ W.T + b
    return anp.mean(logsumexp(z, axis=1) - z[anp.arange(n), y])


def build(system: str, cfg: Config) -> Bench:
    """One system's training step."""
    params, x, y = data(cfg)
    if system in ("numpy-naive", "numpy-best"):
        net = NumpyConvNet(params, x, y, reuse=system == "numpy-best")
        return Bench(net.step, lambda: _named(*net.grad()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import losses
        from nnflow.layers import Chain, Conv2d, Flatten, Linear, MaxPool2d

        s = cfg.pick(SHAPES)
        c0, c1, c2 = s["channels"]
        model = Chain(
            Conv2d(c0, c1, s["k"], activation="relu"),
            Conv2d(c1, c2, s["k"], activation="relu"),
            MaxPool2d(2),
            Flatten(),
            Linear(params[4].shape[1], s["classes"]),
        )
        paths = {}
        for name, p, layer in zip(NAMES, params, (0, 0, 1, 1, 4, 4), strict=True):
            attr = name.rsplit(".", 1)[1]
            setattr(model.layers[layer], attr, p.copy())
            paths[name] = ("layers", layer, attr)

        def loss(model, x, y):
            return losses.cross_entropy(model(x), y)

        return nnflow_training(cfg, system == "nnflow-compiled", model, loss, (x, y), paths)
    if system == "torch":
        import torch

        nn = torch.nn
        s = cfg.pick(SHAPES)
        c0, c1, c2 = s["channels"]
        model = nn.Sequential(
            nn.Conv2d(c0, c1, s["k"]),
            nn.ReLU(),
            nn.Conv2d(c1, c2, s["k"]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(params[4].shape[1], s["classes"]),
        )
        names = dict(
            zip(NAMES, [f"{i}.{a}" for i in (0, 2, 6) for a in ("weight", "bias")], strict=True)
        )
        with torch.no_grad():
            for name, p in zip(NAMES, params, strict=True):
                dict(model.named_parameters())[names[name]].copy_(torch.from_numpy(p))

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
    raise ValueError(f"conv: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
