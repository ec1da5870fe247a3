"""The survey's dense layer: ``sum(exp(W @ x + b[:, None]))``, gradients w.r.t. ``W`` and ``b``.

``W`` 512x256, ``b`` 512, ``x`` 256x4096 (``randn * 0.01`` for ``W`` and ``x``), in float64 and
float32 (the compiled-tapes issue). ``numpy-best`` is the best hand-written version named
there: preallocated buffers, ``out=``, the exp output reused as the backward signal, and
NumPy's ufunc buffer narrowed to 1024 elements around the broadcast bias add (what the compiled
step does too; see ``nnflow/ad/codegen.py``).
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Config, f64, nnflow_device, setup_jax, setup_torch

SHAPES = {"full": {"out": 512, "in": 256, "n": 4096}, "tiny": {"out": 16, "in": 8, "n": 32}}


def data(cfg: Config):
    """``(W, b, x)`` from seed 0, as in the survey."""
    s = cfg.pick(SHAPES)
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((s["out"], s["in"])) * 0.01).astype(cfg.dtype)
    b = rng.standard_normal(s["out"]).astype(cfg.dtype)
    x = (rng.standard_normal((s["in"], s["n"])) * 0.01).astype(cfg.dtype)
    return W, b, x


def loss(W, b, x):
    """The survey's loss (NumPy code; nnflow traces it unchanged)."""
    return np.sum(np.exp(W @ x + b[:, None]))


def _named(value, gW, gb) -> dict:
    return {"value": f64(value), "W": f64(gW), "b": f64(gb)}


def build(system: str, cfg: Config) -> Bench:
    """One system's step: value and both gradients (no update)."""
    W, b, x = data(cfg)
    if system == "numpy-naive":

        def step():
            h = np.exp(W @ x + b[:, None])
            return h.sum(), h @ x.T, h.sum(axis=1)

        return Bench(step, lambda: _named(*step()))
    if system == "numpy-best":
        h, gW, gb = np.empty((W.shape[0], x.shape[1]), W.dtype), np.empty_like(W), np.empty_like(b)

        def step():
            np.matmul(W, x, out=h)
            old = np.setbufsize(1024)  # the broadcast add streams through a small buffer
            np.add(h, b[:, None], out=h)
            np.setbufsize(old)
            np.exp(h, out=h)
            np.matmul(h, x.T, out=gW)  # d loss / d h = exp(...) = h itself
            np.sum(h, axis=1, out=gb)
            return h.sum(), gW, gb

        return Bench(step, lambda: _named(*step()))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import ad

        (W, b, x), sync = nnflow_device(cfg, W, b, x)
        grad = ad.compile_grad(loss, wrt=(0, 1)) if system == "nnflow-compiled" else None

        def run():
            if grad is None:
                return ad.grad(loss, W, b, x, wrt=(0, 1))
            return grad(W, b, x)

        def step():
            out = run()
            sync()
            return out

        def check():
            value, g = run()
            return _named(value, g[0], g[1])

        return Bench(step, check)
    if system == "torch":
        torch, dev, sync = setup_torch(cfg)
        tW, tb = (torch.tensor(a, device=dev, requires_grad=True) for a in (W, b))
        tx = torch.tensor(x, device=dev)

        def run():
            value = torch.exp(tW @ tx + tb[:, None]).sum()
            return (value, *torch.autograd.grad(value, (tW, tb)))

        def step():
            out = run()
            sync()
            return out

        return Bench(step, lambda: _named(*run()))
    if system == "jax":
        jax, jnp, put = setup_jax(cfg, x64=cfg.dtype == "float64")
        jW, jb, jx = (put(a) for a in (W, b, x))
        f = jax.jit(
            jax.value_and_grad(lambda W, b, x: jnp.sum(jnp.exp(W @ x + b[:, None])), (0, 1))
        )

        def step():
            return jax.block_until_ready(f(jW, jb, jx))

        def check():
            value, (gW, gb) = step()
            return _named(value, gW, gb)

        return Bench(step, check)
    if system == "autograd":
        import autograd
        import autograd.numpy as anp

        f = autograd.value_and_grad(lambda W, b: anp.sum(anp.exp(W @ x + b[:, None])), (0, 1))

        def check():
            value, (gW, gb) = f(W, b)
            return _named(value, gW, gb)

        return Bench(lambda: f(W, b), check)
    raise ValueError(f"dense: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
