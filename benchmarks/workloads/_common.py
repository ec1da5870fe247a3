"""What every workload module shares: its configuration, the ``Bench`` it builds, helpers.

A workload module defines ``SYSTEMS`` (the systems it implements), ``SHAPES`` (``"full"`` and
``"tiny"`` dictionaries) and ``build(system, cfg) -> Bench``. ``Bench.step()`` does one timed
unit of work and returns only when the work is done (JAX and GPU systems synchronise);
``Bench.check()`` returns the named results the runner compares across systems (the value and
the gradients at the initial parameters, as float64 NumPy arrays). ``check`` runs once, before
any ``step``: training steps change the parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Every system, in table order.
SYSTEMS = (
    "numpy-naive",
    "numpy-best",
    "nnflow-eager",
    "nnflow-compiled",
    "torch",
    "jax",
    "autograd",
)
#: The module a system needs (absent: always available).
REQUIRES = {"torch": "torch", "jax": "jax", "autograd": "autograd"}
#: Systems whose arrays are NumPy's, so that tracemalloc sees their allocations.
NUMPY_ALLOCATING = ("numpy-naive", "numpy-best", "nnflow-eager", "nnflow-compiled", "autograd")
#: Systems that run on a GPU with ``--device gpu`` (CuPy for nnflow, CUDA for torch and JAX).
GPU_SYSTEMS = ("nnflow-eager", "nnflow-compiled", "torch", "jax")


@dataclass
class Config:
    """How a workload is built: its float type, shapes, device and thread count."""

    dtype: str = "float32"
    tiny: bool = False
    device: str = "cpu"
    threads: int = 1
    options: dict = field(default_factory=dict)

    def pick(self, shapes: dict) -> dict:
        """The entry of a workload's ``SHAPES`` for this run (``"full"`` or ``"tiny"``)."""
        return shapes["tiny" if self.tiny else "full"]


@dataclass
class Bench:
    """One system's implementation of one workload (see the module docstring)."""

    step: Callable[[], Any]
    check: Callable[[], dict]


def f64(x) -> np.ndarray:
    """``x`` (NumPy, CuPy, torch or JAX array, or a scalar) as a float64 NumPy array copy."""
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu().numpy()
    elif hasattr(x, "get") and not isinstance(x, dict):  # CuPy
        x = x.get()
    return np.array(x, dtype=np.float64)


def uniform(rng, shape, fan_in: int, dtype) -> np.ndarray:
    """PyTorch's default initialisation: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


class Buffers:
    """``out=`` targets: preallocated and reused (``reuse=True``) or ``None`` (allocate).

    The hand-written NumPy systems share one body: ``numpy-best`` passes buffers made once
    (the in-place version), ``numpy-naive`` passes ``None``, so every call allocates its result
    as plain expressions would.
    """

    def __init__(self, reuse: bool):
        self.reuse, self._bufs = reuse, {}

    def __call__(self, name: str, shape, dtype):
        if not self.reuse:
            return None
        buf = self._bufs.get(name)
        if buf is None:
            buf = self._bufs[name] = np.empty(shape, dtype)
        return buf


# -- peers: set up once per process ----------------------------------------------------------
def setup_torch(cfg: Config):
    """Import torch with ``cfg.threads`` threads; returns ``(torch, device, sync)``."""
    import torch

    torch.set_num_threads(cfg.threads)
    try:
        torch.set_num_interop_threads(cfg.threads)
    except RuntimeError:  # the pool already started
        pass
    if cfg.device == "gpu":
        return torch, torch.device("cuda"), torch.cuda.synchronize
    return torch, torch.device("cpu"), lambda: None


def setup_jax(cfg: Config, x64: bool):
    """Import JAX on the right platform (float64 enabled when ``x64``); ``(jax, jnp, put)``."""
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if cfg.device == "gpu" else "cpu")
    import jax

    jax.config.update("jax_enable_x64", x64)
    import jax.numpy as jnp

    device = jax.devices()[0]
    return jax, jnp, lambda a: jax.device_put(a, device)


def nnflow_device(cfg: Config, *arrays):
    """``arrays`` moved to ``cfg.device`` for nnflow (CuPy on the GPU), and a sync function."""
    from nnflow.backend import to_device

    moved = [to_device(a, cfg.device) for a in arrays]
    if cfg.device == "gpu":
        import cupy

        return moved, cupy.cuda.get_current_stream().synchronize
    return moved, lambda: None


def grads_by_name(names: dict, grads: dict) -> dict:
    """``{name: float64 gradient}`` from nnflow's ``{path: gradient}`` and ``{name: path}``."""
    return {name: f64(grads[path]) for name, path in names.items()}
