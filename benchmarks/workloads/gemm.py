"""The MLP step's GEMMs alone: the 8 matrix products of ``mlp`` at its shapes, float32.

Forward ``x W1^T``, ``h1 W2^T``, ``h2 W3^T``; backward ``dz^T h2``, ``dz W3``, ``d2^T h1``,
``d2 W2``, ``d1^T x`` (transposes are views, as in the step). It separates the BLAS library's
share of the MLP step from the framework's: NumPy calls OpenBLAS, PyTorch its own (oneDNN/MKL)
kernels, JAX XLA's (Eigen). ``numpy-naive`` writes ``a @ b`` (allocating), ``numpy-best``
``np.matmul(a, b, out=...)``, torch ``torch.mm(a, b, out=...)``. No gradient here: nnflow and
HIPS autograd would run exactly ``numpy-best``'s calls.
"""

from __future__ import annotations

import numpy as np

from ._common import Bench, Config, f64, setup_jax, setup_torch
from .mlp import SHAPES

SYSTEMS = ("numpy-naive", "numpy-best", "torch", "jax")


def operands(cfg: Config) -> dict:
    """Random float32 arrays of the MLP step's shapes (activations and their gradients)."""
    s = cfg.pick(SHAPES)
    n, (i, h1, h2, o) = s["batch"], s["sizes"]
    rng = np.random.default_rng(0)
    shapes = {
        "x": (n, i),
        "W1": (h1, i),
        "h1": (n, h1),
        "W2": (h2, h1),
        "h2": (n, h2),
        "W3": (o, h2),
        "dz": (n, o),
        "d2": (n, h2),
        "d1": (n, h1),
    }
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


#: (left, transpose left?, right, transpose right?) of each product, in the step's order.
PRODUCTS = [
    ("x", False, "W1", True),
    ("h1", False, "W2", True),
    ("h2", False, "W3", True),
    ("dz", True, "h2", False),
    ("dz", False, "W3", False),
    ("d2", True, "h1", False),
    ("d2", False, "W2", False),
    ("d1", True, "x", False),
]


def _pairs(arrays: dict, transpose) -> list:
    return [
        (transpose(arrays[a]) if ta else arrays[a], transpose(arrays[b]) if tb else arrays[b])
        for a, ta, b, tb in PRODUCTS
    ]


def _named(outs) -> dict:
    return {f"gemm{i}": f64(o) for i, o in enumerate(outs)}


def build(system: str, cfg: Config) -> Bench:
    """One system's 8 products."""
    arrays = operands(cfg)
    if system in ("numpy-naive", "numpy-best"):
        pairs = _pairs(arrays, np.transpose)
        if system == "numpy-naive":

            def step():
                return [a @ b for a, b in pairs]
        else:
            outs = [np.empty((a.shape[0], b.shape[1]), np.float32) for a, b in pairs]

            def step():
                for (a, b), out in zip(pairs, outs, strict=True):
                    np.matmul(a, b, out=out)
                return outs

        return Bench(step, lambda: _named(step()))
    if system == "torch":
        torch, dev, sync = setup_torch(cfg)
        pairs = _pairs({k: torch.from_numpy(v).to(dev) for k, v in arrays.items()}, torch.t)
        outs = [torch.empty((a.shape[0], b.shape[1]), device=dev) for a, b in pairs]

        def step():
            for (a, b), out in zip(pairs, outs, strict=True):
                torch.mm(a, b, out=out)
            sync()
            return outs

        return Bench(step, lambda: _named(step()))
    if system == "jax":
        jax, jnp, put = setup_jax(cfg, x64=False)
        pairs = _pairs({k: put(v) for k, v in arrays.items()}, jnp.transpose)
        products = jax.jit(lambda pairs: [a @ b for a, b in pairs])

        def step():
            return jax.block_until_ready(products(pairs))

        return Bench(step, lambda: _named(step()))
    raise ValueError(f"gemm: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
