"""LSTM backpropagation through time (the layers issue), float32.

LSTM(64 -> 128) over a sequence of 50, batch 32 (batch first), loss the mean squared error of
all outputs against a fixed target; gradients w.r.t. the four parameters (no update). nnflow
uses ``nnflow.layers.LSTM``, torch the fused ``nn.LSTM``, JAX a ``lax.scan`` over a cell,
HIPS autograd a Python loop over time. The hand-written NumPy version does the input
projection of all steps in one GEMM, loops over time for the recurrence (forward, then
backward), and gets ``dW_ih`` and ``dW_hh`` with one GEMM each; ``numpy-best`` writes every
result into buffers made once.
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Config, f64, uniform
from .mlp import jax_training, nnflow_training, torch_training

SHAPES = {
    "full": {"batch": 32, "seq": 50, "input": 64, "hidden": 128},
    "tiny": {"batch": 2, "seq": 3, "input": 4, "hidden": 5},
}
NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def data(cfg: Config):
    """``(params, x, target)``: PyTorch's layout and initialisation, one seed."""
    s = cfg.pick(SHAPES)
    h, i = s["hidden"], s["input"]
    rng = np.random.default_rng(0)
    shapes = [(4 * h, i), (4 * h, h), (4 * h,), (4 * h,)]
    params = [uniform(rng, shape, h, np.float32) for shape in shapes]
    x = rng.standard_normal((s["batch"], s["seq"], i)).astype(np.float32)
    target = rng.standard_normal((s["batch"], s["seq"], h)).astype(np.float32)
    return params, x, target


def _sigmoid(z, out=None):
    out = np.negative(z, out=out)
    np.exp(out, out=out)
    np.add(out, 1.0, out=out)
    return np.reciprocal(out, out=out)


def numpy_naive(params, x, target):
    """Loss and gradients, plain NumPy expressions (allocating), lists over time."""
    W_ih, W_hh, b_ih, b_hh = params
    n, steps, _ = x.shape
    hid = W_hh.shape[1]
    xs = x.transpose(1, 0, 2)
    zx = (xs.reshape(steps * n, -1) @ W_ih.T + (b_ih + b_hh)).reshape(steps, n, 4 * hid)
    h, c = np.zeros((n, hid), np.float32), np.zeros((n, hid), np.float32)
    hs, cs, gates, tcs = [h], [c], [], []
    for t in range(steps):
        z = zx[t] + h @ W_hh.T
        i, f = _sigmoid(z[:, :hid]), _sigmoid(z[:, hid : 2 * hid])
        g, o = np.tanh(z[:, 2 * hid : 3 * hid]), _sigmoid(z[:, 3 * hid :])
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs.append(h), cs.append(c), gates.append((i, f, g, o)), tcs.append(tc)
    out = np.stack(hs[1:])  # (T, N, H)
    diff = out - target.transpose(1, 0, 2)
    loss = np.mean(diff * diff)
    dout = diff * (2.0 / diff.size)
    dh, dc, dz = np.zeros_like(h), np.zeros_like(c), [None] * steps
    for t in reversed(range(steps)):
        i, f, g, o = gates[t]
        dh = dh + dout[t]
        dct = dh * o * (1 - tcs[t] ** 2) + dc
        dz[t] = np.concatenate(
            [
                dct * g * i * (1 - i),
                dct * cs[t] * f * (1 - f),
                dct * i * (1 - g * g),
                dh * tcs[t] * o * (1 - o),
            ],
            axis=1,
        )
        dc = dct * f
        dh = dz[t] @ W_hh
    dz = np.stack(dz).reshape(steps * n, -1)
    gb = dz.sum(axis=0)
    grads = [
        dz.T @ xs.reshape(steps * n, -1),
        dz.T @ np.stack(hs[:-1]).reshape(steps * n, -1),
        gb,
        gb.copy(),
    ]
    return loss, grads


class NumpyBest:
    """The same computation with every array a buffer made once and every op ``out=``."""

    def __init__(self, params, x, target):
        self.params, self.x = params, x
        n, steps, inp = x.shape
        hid, f = params[1].shape[1], np.float32
        self.xs = x.transpose(1, 0, 2).reshape(steps * n, inp)  # inputs are data: once
        self.target = np.ascontiguousarray(target.transpose(1, 0, 2))
        self.zx = np.empty((steps, n, 4 * hid), f)  # pre-activations, then the gates
        self.hs = np.zeros((steps + 1, n, hid), f)  # hs[0] = cs[0] = 0: the initial state
        self.cs = np.zeros((steps + 1, n, hid), f)
        self.tcs = np.empty((steps, n, hid), f)
        self.dz = np.empty((steps, n, 4 * hid), f)
        self.dh, self.dc, self.t1, self.t2 = (np.empty((n, hid), f) for _ in range(4))
        self.diff = np.empty((steps, n, hid), f)
        self.b = np.empty(4 * hid, f)
        self.grads = [np.empty_like(p) for p in params]

    def grad(self):
        """Loss and gradients (the gradients are the object's buffers)."""
        W_ih, W_hh, b_ih, b_hh = self.params
        zx, hs, cs, tcs, dz, diff = self.zx, self.hs, self.cs, self.tcs, self.dz, self.diff
        dh, dc, t1, t2 = self.dh, self.dc, self.t1, self.t2
        steps, n, hid4 = zx.shape
        hid = hid4 // 4
        np.add(b_ih, b_hh, out=self.b)
        np.matmul(self.xs, W_ih.T, out=zx.reshape(steps * n, hid4))
        np.add(zx, self.b, out=zx)
        for t in range(steps):
            z = zx[t]
            z += np.matmul(hs[t], W_hh.T, out=dz[t])  # dz[t] is free scratch until backward
            i, f, g, o = z[:, :hid], z[:, hid : 2 * hid], z[:, 2 * hid : 3 * hid], z[:, 3 * hid :]
            _sigmoid(z[:, : 2 * hid], out=z[:, : 2 * hid])
            np.tanh(g, out=g)
            _sigmoid(o, out=o)
            np.multiply(f, cs[t], out=cs[t + 1])
            np.multiply(i, g, out=t1)
            np.add(cs[t + 1], t1, out=cs[t + 1])
            np.tanh(cs[t + 1], out=tcs[t])
            np.multiply(o, tcs[t], out=hs[t + 1])
        np.subtract(hs[1:], self.target, out=diff)
        loss = np.vdot(diff, diff) / diff.size
        np.multiply(diff, 2.0 / diff.size, out=diff)  # d loss / d outputs
        dh.fill(0)
        dc.fill(0)
        for t in reversed(range(steps)):
            gates, d = zx[t], dz[t]
            i, f, g, o = (
                gates[:, :hid],
                gates[:, hid : 2 * hid],
                gates[:, 2 * hid : 3 * hid],
                gates[:, 3 * hid :],
            )
            di, df, dg, do = (
                d[:, :hid],
                d[:, hid : 2 * hid],
                d[:, 2 * hid : 3 * hid],
                d[:, 3 * hid :],
            )
            np.add(dh, diff[t], out=dh)
            np.multiply(dh, tcs[t], out=do)  # do = dh * tanh(c), times o(1 - o) below
            np.multiply(tcs[t], tcs[t], out=t1)
            np.subtract(1.0, t1, out=t1)
            np.multiply(t1, o, out=t1)
            np.multiply(t1, dh, out=t1)
            np.add(t1, dc, out=t1)  # t1 = d c_t
            np.multiply(t1, f, out=dc)  # to the previous step
            _gate_back(do, o, t2)
            np.multiply(t1, g, out=di)
            _gate_back(di, i, t2)
            np.multiply(t1, cs[t], out=df)
            _gate_back(df, f, t2)
            np.multiply(t1, i, out=dg)
            np.multiply(g, g, out=t2)
            np.subtract(1.0, t2, out=t2)
            np.multiply(dg, t2, out=dg)
            np.matmul(d, W_hh, out=dh)
        gW_ih, gW_hh, gb_ih, gb_hh = self.grads
        d2 = dz.reshape(steps * n, hid4)
        np.matmul(d2.T, self.xs, out=gW_ih)
        np.matmul(d2.T, hs[:-1].reshape(steps * n, hid), out=gW_hh)
        np.sum(d2, axis=0, out=gb_ih)
        np.copyto(gb_hh, gb_ih)
        return loss, self.grads


def _gate_back(d, s, tmp):
    """``d *= s * (1 - s)``: through a sigmoid whose output is ``s``."""
    np.subtract(1.0, s, out=tmp)
    np.multiply(tmp, s, out=tmp)
    np.multiply(d, tmp, out=d)


def _named(loss, grads) -> dict:
    return {"loss": f64(loss), **{k: f64(g) for k, g in zip(NAMES, grads, strict=True)}}


def _jax_loss(jnp, jax, p, x, target):
    W_ih, W_hh, b_ih, b_hh = p
    zx = jnp.swapaxes(x, 0, 1) @ W_ih.T + (b_ih + b_hh)

    def cell(carry, z):
        h, c = carry
        i, f, g, o = jnp.split(z + h @ W_hh.T, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[0], W_hh.shape[1]), x.dtype)
    _, hs = jax.lax.scan(cell, (zeros, zeros), zx)
    return jnp.mean((jnp.swapaxes(hs, 0, 1) - target) ** 2)


def _autograd_loss(p, x, target):
    import autograd.numpy as anp

    W_ih, W_hh, b_ih, b_hh = p
    n, steps, _ = x.shape
    hid = W_hh.shape[1]
    h = c = anp.zeros((n, hid), np.float32)
    outs = []
    for t in range(steps):
        z = x[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        i, f = 1 / (1 + anp.exp(-z[:, :hid])), 1 / (1 + anp.exp(-z[:, hid : 2 * hid]))
        g, o = anp.tanh(z[:, 2 * hid : 3 * hid]), 1 / (1 + anp.exp(-z[:, 3 * hid :]))
        c = f * c + i * g
        h = o * anp.tanh(c)
        outs.append(h)
    return anp.mean((anp.stack(outs, axis=1) - target) ** 2)


def nnflow_sequence(cfg: Config, system: str, layer_cls, params, x, target) -> Bench:
    """nnflow's ``layer_cls`` (``LSTM``, ``GRU``, ``RNN``) holding ``params`` (PyTorch's
    names, ``NAMES``): the MSE of its outputs and the parameter gradients, no update."""
    from nnflow import losses

    s = cfg.pick(SHAPES)
    model = layer_cls(s["input"], s["hidden"])
    for name, p in zip(NAMES, params, strict=True):
        setattr(model, name, p.copy())

    def loss(model, x, target):
        return losses.mse(model(x)[0], target)

    paths = {name: (name,) for name in NAMES}
    compiled = system == "nnflow-compiled"
    return nnflow_training(cfg, compiled, model, loss, (x, target), paths, update=False)


def torch_sequence(cfg: Config, layer_cls, params, x, target) -> Bench:
    """The same with torch's fused ``layer_cls`` (``torch.nn.LSTM``, ``GRU``, ``RNN``)."""
    import torch

    s = cfg.pick(SHAPES)
    model = layer_cls(s["input"], s["hidden"], batch_first=True)
    with torch.no_grad():
        for name, p in zip(NAMES, params, strict=True):
            getattr(model, name).copy_(torch.from_numpy(p))

    def loss_fn(model, x, target):
        return ((model(x)[0] - target) ** 2).mean()

    names = {name: name for name in NAMES}
    return torch_training(cfg, model, loss_fn, (x, target), names, update=False)


def build(system: str, cfg: Config) -> Bench:
    """One system's loss and gradients (no update)."""
    params, x, target = data(cfg)
    if system == "numpy-naive":
        return Bench(
            lambda: numpy_naive(params, x, target), lambda: _named(*numpy_naive(params, x, target))
        )
    if system == "numpy-best":
        best = NumpyBest(params, x, target)
        return Bench(best.grad, lambda: _named(*best.grad()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow.layers import LSTM

        return nnflow_sequence(cfg, system, LSTM, params, x, target)
    if system == "torch":
        import torch

        return torch_sequence(cfg, torch.nn.LSTM, params, x, target)
    if system == "jax":
        return jax_training(cfg, _jax_loss, params, (x, target), NAMES, update=False)
    if system == "autograd":
        import autograd

        vg = autograd.value_and_grad(_autograd_loss)
        return Bench(lambda: vg(params, x, target), lambda: _named(*vg(params, x, target)))
    raise ValueError(f"lstm: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
