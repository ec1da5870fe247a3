"""Second order: a Hessian-vector product of a small MLP's loss, float64.

``loss(theta) = mean((tanh(X W1^T + b1) w2 + b2 - y)^2)`` with ``X`` 256x32, 64 hidden units,
all parameters in one flat vector ``theta`` (2,177 entries); the workload is ``H(theta) v`` for
a fixed ``v``, without forming ``H``. nnflow eager is ``ad.hvp`` (forward over reverse); nnflow
compiled differentiates ``<grad loss(theta), v>`` with ``ad.compile_grad`` (reverse over
reverse, compiled once); torch differentiates twice (``create_graph=True``); JAX jits
``jvp(grad(loss))``; HIPS autograd is ``hessian_vector_product``. The hand-written NumPy
version is Pearlmutter's R-operator applied by hand to the forward and backward passes.
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Buffers, Config, f64, nnflow_device, setup_jax, setup_torch

SHAPES = {"full": {"n": 256, "d": 32, "hidden": 64}, "tiny": {"n": 6, "d": 3, "hidden": 4}}


def data(cfg: Config):
    """``(theta, v, X, y)`` from one seed (``theta`` at a typical initialisation scale)."""
    s = cfg.pick(SHAPES)
    n, d, h = s["n"], s["d"], s["hidden"]
    rng = np.random.default_rng(0)
    size = h * d + h + h + 1
    theta = rng.standard_normal(size) / np.sqrt(d)
    v = rng.standard_normal(size)
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    return theta, v, X, y


def make_loss(X, y, hidden: int, module=np):
    """``loss(theta)`` written against ``module`` (NumPy, torch, jax.numpy, autograd.numpy)."""
    d = X.shape[1]

    def loss(theta):
        W1 = theta[: hidden * d].reshape(hidden, d)
        b1 = theta[hidden * d : hidden * d + hidden]
        w2 = theta[hidden * d + hidden : hidden * d + 2 * hidden]
        r = module.tanh(X @ W1.T + b1) @ w2 + theta[-1] - y
        return module.mean(r * r)

    return loss


def numpy_hvp(theta, v, X, y, hidden: int, o: Buffers):
    """``H v`` by the R-operator: forward, backward, and their directional derivatives."""
    n, d = X.shape
    k = hidden * d
    f = np.float64
    W1, b1, w2 = theta[:k].reshape(hidden, d), theta[k : k + hidden], theta[k + hidden : -1]
    V1, vb1, vw2, vb2 = v[:k].reshape(hidden, d), v[k : k + hidden], v[k + hidden : -1], v[-1]
    h = np.matmul(X, W1.T, out=o("h", (n, hidden), f))
    np.add(h, b1, out=h)
    np.tanh(h, out=h)
    r = np.matmul(h, w2, out=o("r", (n,), f))
    np.add(r, theta[-1], out=r)
    np.subtract(r, y, out=r)
    da = np.multiply(r, 2.0 / n, out=o("da", (n,), f))  # d loss / d output
    dtanh = np.multiply(h, h, out=o("dtanh", h.shape, f))
    np.subtract(1.0, dtanh, out=dtanh)  # 1 - h^2
    # R{.}: directional derivatives along v
    Rh = np.matmul(X, V1.T, out=o("Rh", h.shape, f))
    np.add(Rh, vb1, out=Rh)
    np.multiply(Rh, dtanh, out=Rh)
    Ra = np.matmul(Rh, w2, out=o("Ra", (n,), f))
    Ra += np.matmul(h, vw2, out=o("Ra2", (n,), f))
    np.add(Ra, vb2, out=Ra)
    np.multiply(Ra, 2.0 / n, out=Ra)  # R{da}
    out = o("out", theta.shape, f)
    out = np.empty_like(theta) if out is None else out
    RW1, Rb1, Rw2 = out[:k].reshape(hidden, d), out[k : k + hidden], out[k + hidden : -1]
    np.matmul(Rh.T, da, out=Rw2)  # R{h^T da} = R{h}^T da + h^T R{da}
    Rw2 += np.matmul(h.T, Ra, out=o("Rw2", (hidden,), f))
    out[-1] = Ra.sum()
    # R{du} with du = (da w2^T) (1 - h^2):
    # R{du} = (R{da} w2^T + da vw2^T)(1 - h^2) - 2 (da w2^T) h R{h}
    du = np.multiply.outer(da, w2, out=o("du", h.shape, f))
    Rdu = np.multiply.outer(Ra, w2, out=o("Rdu", h.shape, f))
    Rdu += np.multiply.outer(da, vw2, out=o("Rdu2", h.shape, f))
    np.multiply(Rdu, dtanh, out=Rdu)
    np.multiply(du, h, out=du)
    np.multiply(du, Rh, out=du)
    np.multiply(du, 2.0, out=du)
    np.subtract(Rdu, du, out=Rdu)
    np.matmul(Rdu.T, X, out=RW1)
    np.sum(Rdu, axis=0, out=Rb1)
    return out


def build(system: str, cfg: Config) -> Bench:
    """One system's Hessian-vector product."""
    theta, v, X, y = data(cfg)
    hidden = cfg.pick(SHAPES)["hidden"]

    def named(hv):
        return {"hvp": f64(hv)}

    if system in ("numpy-naive", "numpy-best"):
        o = Buffers(reuse=system == "numpy-best")

        def step():
            return numpy_hvp(theta, v, X, y, hidden, o)

        return Bench(step, lambda: named(step()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import ad

        (theta, v, X, y), sync = nnflow_device(cfg, theta, v, X, y)
        loss = make_loss(X, y, hidden)
        gradient = ad.gradient(loss)

        def directional(theta, v):
            return np.sum(gradient(theta) * v)

        compiled = ad.compile_grad(directional, wrt=(0,))

        def run():
            if system == "nnflow-eager":
                return ad.hvp(loss, theta, v)
            return compiled(theta, v)[1][0]

        def step():
            out = run()
            sync()
            return out

        return Bench(step, lambda: named(run()))
    if system == "torch":
        torch, dev, sync = setup_torch(cfg)
        tX, ty, tv = (torch.tensor(a, device=dev) for a in (X, y, v))
        t = torch.tensor(theta, device=dev, requires_grad=True)
        loss = make_loss(tX, ty, hidden, torch)

        def run():
            (g,) = torch.autograd.grad(loss(t), t, create_graph=True)
            return torch.autograd.grad(g @ tv, t)[0]

        def step():
            out = run()
            sync()
            return out

        return Bench(step, lambda: named(run()))
    if system == "jax":
        jax, jnp, put = setup_jax(cfg, x64=True)
        jt, jv, jX, jy = (put(a) for a in (theta, v, X, y))
        grad = jax.grad(make_loss(jX, jy, hidden, jnp))
        hvp = jax.jit(lambda t, v: jax.jvp(grad, (t,), (v,))[1])

        def step():
            return jax.block_until_ready(hvp(jt, jv))

        return Bench(step, lambda: named(step()))
    if system == "autograd":
        import autograd
        import autograd.numpy as anp

        hvp = autograd.hessian_vector_product(make_loss(X, y, hidden, anp))
        return Bench(lambda: hvp(theta, v), lambda: named(hvp(theta, v)))
    raise ValueError(f"hvp: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
