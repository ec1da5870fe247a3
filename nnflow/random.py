"""Random draws that stay random under tracing: normal, uniform, bernoulli, permutation.

A function that draws noise with ``rng.normal(...)`` while it is traced bakes that one sample
into the tape: every replay (and every call of a compiled step) would reuse the same noise, so
Dropout would drop the same units forever and a VAE would see one epsilon. The functions here
record each draw as a tape operation instead. Replaying the tape, or calling the step compiled
by ``ad.compile_grad``, draws again from the *same generator object*, so a seeded run repeats
exactly and two calls draw different noise. Outside tracing they just draw.

``rng`` is a ``numpy.random.Generator`` (CPU) or a ``cupy.random.Generator`` (GPU), passed by
the caller or held by the model (``self.rng = nnflow.random.default_rng(0)``). ``like`` is an
array (or a traced array) whose device the result goes to; without it the result lives where
the generator draws.

>>> import numpy as np
>>> rng = default_rng(0)
>>> normal(rng, (2, 3)).dtype, uniform(rng, 4, low=-1.0, high=1.0).shape
(dtype('float32'), (4,))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ad.tracer import record_source
from .backend import device_of, to_device

__all__ = ["default_rng", "normal", "uniform", "bernoulli", "permutation"]


def default_rng(seed: int | None = None) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) seeded with ``seed``: what models hold to draw noise.

    >>> int(default_rng(1).integers(10)) == int(default_rng(1).integers(10))
    True
    """
    return np.random.default_rng(seed)


def _impure(fn):
    """Mark ``fn`` as a source of fresh values: never merged or removed by tape optimisers."""
    fn.__nnflow_impure__ = True
    return fn


def _rng_device(rng) -> str:
    return "gpu" if type(rng).__module__.startswith("cupy") else "cpu"


def _place(x, rng, device: str | None):
    if device is None or device == _rng_device(rng):
        return x
    return to_device(x, device)


def _floating(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"nnflow.random: expected a floating-point dtype, got {dtype}")
    return dtype


def _shape(shape) -> tuple[int, ...]:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)


def _native(dtype: np.dtype) -> np.dtype:
    """The dtype a generator can draw directly (float32/float64); others are cast after."""
    return dtype if dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype("f8")


@_impure
def draw_normal(rng, shape, dtype, device):
    """The recorded primitive behind :func:`normal`."""
    x = rng.standard_normal(shape, dtype=_native(dtype))
    return _place(x.astype(dtype, copy=False), rng, device)


@_impure
def draw_uniform(rng, shape, low, high, dtype, device):
    """The recorded primitive behind :func:`uniform`."""
    x = rng.random(shape, dtype=_native(dtype))
    if (low, high) != (0.0, 1.0):
        x *= high - low
        x += low
    return _place(x.astype(dtype, copy=False), rng, device)


@_impure
def draw_bernoulli(rng, p, shape, dtype, device):
    """The recorded primitive behind :func:`bernoulli`."""
    x = (rng.random(shape) < p).astype(dtype)
    return _place(x, rng, device)


@_impure
def draw_permutation(rng, n):
    """The recorded primitive behind :func:`permutation`."""
    return rng.permutation(n)


def _device(like) -> str | None:
    return None if like is None else device_of(like)


def normal(rng: Any, shape, dtype=np.float32, like: Any = None):
    """Standard normal samples ``N(0, 1)`` of ``shape``.

    Args:
        rng: the generator to draw from (NumPy or CuPy ``Generator``).
        shape: an int or a tuple of ints.
        dtype: a floating-point dtype (``float32`` by default, as layers use).
        like: an array whose device the result goes to.

    >>> normal(default_rng(0), (2,), dtype=np.float64).shape
    (2,)
    """
    return record_source(draw_normal, (rng, _shape(shape), _floating(dtype), _device(like)))


def uniform(rng: Any, shape, low: float = 0.0, high: float = 1.0, dtype=np.float32, like=None):
    """Samples uniform on ``[low, high)`` of ``shape``.

    >>> x = uniform(default_rng(0), 1000, low=-2.0, high=2.0)
    >>> bool((x >= -2).all() and (x < 2).all())
    True
    """
    args = (rng, _shape(shape), float(low), float(high), _floating(dtype), _device(like))
    return record_source(draw_uniform, args)


def bernoulli(rng: Any, p: float, shape, dtype=np.float32, like: Any = None):
    """Ones with probability ``p`` and zeros otherwise, of ``shape`` (a dropout keep-mask).

    >>> bernoulli(default_rng(0), 1.0, 3).tolist()
    [1.0, 1.0, 1.0]
    """
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"nnflow.random.bernoulli: p must be in [0, 1], got {p}")
    args = (rng, float(p), _shape(shape), np.dtype(dtype), _device(like))
    return record_source(draw_bernoulli, args)


def permutation(rng: Any, n: int):
    """A random permutation of ``range(n)`` (an integer array on the generator's device).

    >>> sorted(permutation(default_rng(0), 4).tolist())
    [0, 1, 2, 3]
    """
    return record_source(draw_permutation, (rng, int(n)))
