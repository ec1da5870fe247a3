"""A VAE training step on 28x28 inputs (flattened to 784), float32, SGD (lr 1e-4).

Encoder 784 -> 400 (relu) -> 40 = (mu, logvar) of a 20-dimensional latent; ``z = mu +
exp(logvar / 2) * eps``; decoder 20 -> 400 (relu) -> 784 pixel logits; batch 128 of inputs in
[0, 1]. Loss: the negative ELBO per image, binary cross-entropy with logits summed over pixels
plus the Gaussian KL (``nnflow.losses.binary_cross_entropy_with_logits`` and ``gaussian_kl``).
The noise ``eps`` is drawn once and passed in like the batch, so that every system computes the
same step (drawing it costs the same everywhere and would only blur the comparison).
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Buffers, Config, f64, uniform
from .mlp import jax_training, nnflow_training, torch_training

SHAPES = {
    "full": {"pixels": 784, "hidden": 400, "latent": 20, "batch": 128},
    "tiny": {"pixels": 16, "hidden": 8, "latent": 2, "batch": 4},
}
LR = 1e-4  # small: thousands of steps on one batch must not diverge
NAMES = (
    "enc1.weight",
    "enc1.bias",
    "enc2.weight",
    "enc2.bias",
    "dec1.weight",
    "dec1.bias",
    "dec2.weight",
    "dec2.bias",
)


def data(cfg: Config):
    """``(params, x, eps)``: PyTorch's layout and initialisation, one seed."""
    s = cfg.pick(SHAPES)
    p, h, lat, n = s["pixels"], s["hidden"], s["latent"], s["batch"]
    rng = np.random.default_rng(0)
    params = []
    for n_in, n_out in ((p, h), (h, 2 * lat), (lat, h), (h, p)):
        params += [
            uniform(rng, (n_out, n_in), n_in, np.float32),
            uniform(rng, (n_out,), n_in, np.float32),
        ]
    x = rng.random((n, p), dtype=np.float32)
    eps = rng.standard_normal((n, lat)).astype(np.float32)
    return params, x, eps


class NumpyVAE:
    """The step hand-written in NumPy; ``reuse``: every result in a buffer made once."""

    def __init__(self, params, x, eps, reuse: bool):
        self.params, self.x, self.eps, self.o = params, x, eps, Buffers(reuse)

    def _linear(self, name, a, W, b, relu: bool):
        out = np.matmul(a, W.T, out=self.o(name, (len(a), len(W)), np.float32))
        np.add(out, b, out=out)
        return np.maximum(out, 0, out=out) if relu else out

    def _linear_back(self, name, d, a, W, relu_out=None):
        """``(dW, db, d input)``; ``relu_out``: the input was a relu's output (mask by it)."""
        o, f = self.o, np.float32
        gW = np.matmul(d.T, a, out=o(name + ".gW", W.shape, f))
        gb = np.sum(d, axis=0, out=o(name + ".gb", W.shape[:1], f))
        if relu_out is None:
            return gW, gb, None
        da = np.matmul(d, W, out=o(name + ".da", a.shape, f))
        mask = np.greater(relu_out, 0, out=o(name + ".mask", a.shape, bool))
        return gW, gb, np.multiply(da, mask, out=da)

    def grad(self):
        """Loss and the eight gradients (before the update)."""
        o, f, (W1, b1, W2, b2, W3, b3, W4, b4), x, eps = (
            self.o,
            np.float32,
            self.params,
            self.x,
            self.eps,
        )
        n, lat = eps.shape
        h = self._linear("h", x, W1, b1, relu=True)
        enc = self._linear("enc", h, W2, b2, relu=False)
        mu, lv = enc[:, :lat], enc[:, lat:]
        std = np.exp(np.multiply(lv, 0.5, out=o("std", lv.shape, f)), out=o("std", lv.shape, f))
        z = np.add(mu, np.multiply(std, eps, out=o("z", mu.shape, f)), out=o("z", mu.shape, f))
        d = self._linear("d", z, W3, b3, relu=True)
        logits = self._linear("logits", d, W4, b4, relu=False)
        # -ELBO = sum((1 - x) l + log(1 + exp(-l))) / n + mean(KL); log1p(exp(-l)) stably:
        t = np.logaddexp(
            0, np.negative(logits, out=o("t", logits.shape, f)), out=o("t", logits.shape, f)
        )
        recon = (np.sum(t) + np.vdot(1 - x, logits)) / n
        var = np.exp(lv, out=o("var", lv.shape, f))
        kl = -0.5 * (np.sum(lv) - np.vdot(mu, mu) - np.sum(var)) / n - 0.5 * lat
        # backward: d/dl = (sigmoid(l) - x) / n, written into t
        np.exp(np.negative(t, out=t), out=t)  # exp(-log(1 + exp(-l))) = sigmoid(l)
        np.subtract(t, x, out=t)
        np.multiply(t, 1.0 / n, out=t)
        gW4, gb4, dd = self._linear_back("logits", t, d, W4, relu_out=d)
        gW3, gb3, _ = self._linear_back("d", dd, z, W3)
        dz = np.matmul(dd, W3, out=o("dz", z.shape, f))
        denc = o("denc", enc.shape, f)
        denc = np.empty_like(enc) if denc is None else denc
        dmu, dlv = denc[:, :lat], denc[:, lat:]
        np.multiply(mu, 1.0 / n, out=dmu)
        np.add(dmu, dz, out=dmu)  # dz/dmu = 1
        np.subtract(var, 1.0, out=dlv)
        np.multiply(dlv, 0.5 / n, out=dlv)  # KL: 0.5 (exp(lv) - 1) / n
        np.multiply(dz, eps, out=dz)
        np.multiply(dz, std, out=dz)
        np.multiply(dz, 0.5, out=dz)  # dz/dlv = eps * std / 2
        np.add(dlv, dz, out=dlv)
        gW2, gb2, dh = self._linear_back("enc", denc, h, W2, relu_out=h)
        gW1, gb1, _ = self._linear_back("h", dh, x, W1)
        return recon + kl, [gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4]

    def step(self):
        """Gradients, then ``p -= lr * g`` in place."""
        loss, grads = self.grad()
        for p, g in zip(self.params, grads, strict=True):
            np.multiply(g, LR, out=g)
            np.subtract(p, g, out=p)
        return loss


def _named(loss, grads) -> dict:
    return {"loss": f64(loss), **{k: f64(g) for k, g in zip(NAMES, grads, strict=True)}}


def _jax_loss(jnp, jax, p, x, eps):
    W1, b1, W2, b2, W3, b3, W4, b4 = p
    lat = eps.shape[1]
    enc = jax.nn.relu(x @ W1.T + b1) @ W2.T + b2
    mu, lv = enc[:, :lat], enc[:, lat:]
    logits = jax.nn.relu((mu + jnp.exp(0.5 * lv) * eps) @ W3.T + b3) @ W4.T + b4
    recon = jnp.sum((1 - x) * logits + jnp.logaddexp(0, -logits)) / x.shape[0]
    return recon + jnp.mean(-0.5 * jnp.sum(1 + lv - mu * mu - jnp.exp(lv), axis=-1))


def _autograd_loss(p, x, eps):
    import autograd.numpy as anp

    W1, b1, W2, b2, W3, b3, W4, b4 = p
    lat = eps.shape[1]
    enc = anp.maximum(x @ W1.T + b1, 0) @ W2.T + b2
    mu, lv = enc[:, :lat], enc[:, lat:]
    logits = anp.maximum((mu + anp.exp(0.5 * lv) * eps) @ W3.T + b3, 0) @ W4.T + b4
    recon = anp.sum((1 - x) * logits + anp.logaddexp(0, -logits)) / x.shape[0]
    return recon + anp.mean(-0.5 * anp.sum(1 + lv - mu * mu - anp.exp(lv), axis=-1))


def _nnflow_vae(params, latent: int):
    from nnflow import Model
    from nnflow.layers import Chain, Linear

    class VAE(Model):
        """Encoder -> (mu, logvar) -> z -> decoder logits, ``eps`` given."""

        def __init__(self):
            p = params
            self.encoder = Chain(
                Linear(p[0].shape[1], p[0].shape[0], activation="relu"),
                Linear(p[2].shape[1], p[2].shape[0]),
            )
            self.decoder = Chain(
                Linear(p[4].shape[1], p[4].shape[0], activation="relu"),
                Linear(p[6].shape[1], p[6].shape[0]),
            )
            self.latent = latent

        def forward(self, x, eps):
            h = self.encoder(x)
            mu, logvar = h[:, : self.latent], h[:, self.latent :]
            return self.decoder(mu + np.exp(0.5 * logvar) * eps), mu, logvar

    model, paths = VAE(), {}
    for k, (name, p) in enumerate(zip(NAMES, params, strict=True)):
        part, attr = ("encoder", "decoder")[k // 4], name.rsplit(".", 1)[1]
        setattr(getattr(model, part).layers[(k // 2) % 2], attr, p.copy())
        paths[name] = (part, "layers", (k // 2) % 2, attr)
    return model, paths


def build(system: str, cfg: Config) -> Bench:
    """One system's training step."""
    params, x, eps = data(cfg)
    if system in ("numpy-naive", "numpy-best"):
        vae = NumpyVAE(params, x, eps, reuse=system == "numpy-best")
        return Bench(vae.step, lambda: _named(*vae.grad()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import losses

        model, paths = _nnflow_vae(params, eps.shape[1])

        def loss(model, x, eps):
            logits, mu, logvar = model(x, eps)
            recon = losses.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            return recon / x.shape[0] + losses.gaussian_kl(mu, logvar)

        compiled = system == "nnflow-compiled"
        return nnflow_training(cfg, compiled, model, loss, (x, eps), paths, lr=LR)
    if system == "torch":
        import torch

        nn = torch.nn
        model = nn.ModuleDict(
            {
                "encoder": nn.Sequential(
                    nn.Linear(*params[0].shape[::-1]), nn.ReLU(), nn.Linear(*params[2].shape[::-1])
                ),
                "decoder": nn.Sequential(
                    nn.Linear(*params[4].shape[::-1]), nn.ReLU(), nn.Linear(*params[6].shape[::-1])
                ),
            }
        )
        names = {}
        for k, name in enumerate(NAMES):  # encoder.0.weight, ..., decoder.2.bias
            part, layer, attr = ("encoder", "decoder")[k // 4], 2 * ((k // 2) % 2), name[5:]
            names[name] = f"{part}.{layer}.{attr}"
        with torch.no_grad():
            for name, p in zip(NAMES, params, strict=True):
                dict(model.named_parameters())[names[name]].copy_(torch.from_numpy(p))
        lat = eps.shape[1]

        def loss_fn(model, x, eps):
            h = model["encoder"](x)
            mu, lv = h[:, :lat], h[:, lat:]
            logits = model["decoder"](mu + torch.exp(0.5 * lv) * eps)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + lv - mu * mu - torch.exp(lv), dim=-1)
            return bce / x.shape[0] + kl.mean()

        return torch_training(cfg, model, loss_fn, (x, eps), names, lr=LR)
    if system == "jax":
        return jax_training(cfg, _jax_loss, params, (x, eps), NAMES, lr=LR)
    if system == "autograd":
        import autograd

        vg = autograd.value_and_grad(_autograd_loss)

        def step():
            loss, grads = vg(params, x, eps)
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
            return loss

        return Bench(step, lambda: _named(*vg(params, x, eps)))
    raise ValueError(f"vae: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
