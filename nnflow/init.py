"""Parameter initialisers: each returns a new array of ``shape`` drawn from ``rng``.

``rng`` is a ``numpy.random.Generator``, an int seed, or ``None`` (fresh OS entropy); layers
hold one and pass it here, so a seeded model is reproducible. The formulas and names follow
``torch.nn.init`` (fans of a convolution weight ``(out, in, *kernel)`` include the kernel).

>>> w = kaiming_uniform((64, 32), rng=0)
>>> w.dtype, w.shape, bool(abs(w).max() <= math.sqrt(6 / 32))
(dtype('float32'), (64, 32), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import random as nnrandom

__all__ = [
    "as_generator",
    "calculate_gain",
    "fans",
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "xavier_uniform",
    "xavier_normal",
    "glorot_uniform",
    "glorot_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "he_uniform",
    "he_normal",
    "orthogonal",
]

Shape = Any  # an int or a tuple of ints


def as_generator(rng: Any = None) -> np.random.Generator:
    """``rng`` itself if it is a generator, else a new one seeded with it (``None``: entropy).

    >>> bool(as_generator(3).integers(100) == as_generator(3).integers(100))
    True
    """
    if rng is not None and hasattr(rng, "random") and hasattr(rng, "standard_normal"):
        return rng
    return nnrandom.default_rng(rng)


def _shape(shape: Shape) -> tuple[int, ...]:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)


def fans(shape: Shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight: ``(in, out)`` of a matrix ``(out, in)``, times the
    receptive field for convolution weights ``(out, in, *kernel)``.

    >>> fans((16, 3, 3, 3))
    (27, 144)
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (PyTorch's table).

    >>> round(calculate_gain("relu"), 4), round(calculate_gain("leaky_relu", 0.2), 4)
    (1.4142, 1.3868)
    """
    linear = ("linear", "identity", "sigmoid", "conv1d", "conv2d", "conv_transpose2d")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def zeros(shape: Shape, dtype=np.float32) -> np.ndarray:
    """Zeros (biases, BatchNorm shifts).

    >>> zeros(2).tolist()
    [0.0, 0.0]
    """
    return np.zeros(_shape(shape), dtype)


def ones(shape: Shape, dtype=np.float32) -> np.ndarray:
    """Ones (normalisation scales).

    >>> ones(2).tolist()
    [1.0, 1.0]
    """
    return np.ones(_shape(shape), dtype)


def constant(shape: Shape, value: float, dtype=np.float32) -> np.ndarray:
    """``value`` everywhere.

    >>> constant(2, 0.5).tolist()
    [0.5, 0.5]
    """
    return np.full(_shape(shape), value, dtype)


def uniform(shape: Shape, low: float = 0.0, high: float = 1.0, rng=None, dtype=np.float32):
    """Samples from ``U(low, high)``.

    >>> bool((uniform(100, -1, 1, rng=0) >= -1).all())
    True
    """
    return as_generator(rng).uniform(low, high, _shape(shape)).astype(dtype)


def normal(shape: Shape, mean: float = 0.0, std: float = 1.0, rng=None, dtype=np.float32):
    """Samples from ``N(mean, std^2)``.

    >>> normal((2, 2), rng=0).shape
    (2, 2)
    """
    return as_generator(rng).normal(mean, std, _shape(shape)).astype(dtype)


def xavier_uniform(shape: Shape, gain: float = 1.0, rng=None, dtype=np.float32):
    """Glorot & Bengio (2010): ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    >>> float(abs(xavier_uniform((10, 20), rng=0)).max()) <= math.sqrt(6 / 30)
    True
    """
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -bound, bound, rng, dtype)


def xavier_normal(shape: Shape, gain: float = 1.0, rng=None, dtype=np.float32):
    """Glorot & Bengio (2010): ``N(0, std^2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    >>> xavier_normal((10, 20), rng=0).shape
    (10, 20)
    """
    fan_in, fan_out = fans(shape)
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng, dtype)


def _kaiming_std(shape, a, mode, nonlinearity) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fans(shape)[0 if mode == "fan_in" else 1]
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform(
    shape: Shape,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    rng=None,
    dtype=np.float32,
):
    """He et al. (2015): ``U(-b, b)`` with ``b = gain * sqrt(3 / fan)``.

    PyTorch's default for ``Linear`` and convolutions is ``a=sqrt(5)``: ``b = 1/sqrt(fan_in)``.

    >>> w = kaiming_uniform((8, 4), a=math.sqrt(5), rng=0)
    >>> bool(abs(w).max() <= 0.5)
    True
    """
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return uniform(shape, -bound, bound, rng, dtype)


def kaiming_normal(
    shape: Shape,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    rng=None,
    dtype=np.float32,
):
    """He et al. (2015): ``N(0, std^2)`` with ``std = gain / sqrt(fan)``.

    >>> kaiming_normal((8, 4), nonlinearity="relu", rng=0).shape
    (8, 4)
    """
    return normal(shape, 0.0, _kaiming_std(shape, a, mode, nonlinearity), rng, dtype)


def orthogonal(shape: Shape, gain: float = 1.0, rng=None, dtype=np.float32):
    """Saxe et al. (2013): a (semi-)orthogonal matrix from the QR decomposition of a normal
    one, the trailing dimensions flattened; times ``gain``.

    >>> q = orthogonal((3, 3), rng=0).astype(np.float64)
    >>> bool(np.allclose(q @ q.T, np.eye(3), atol=1e-6))
    True
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs at least 2 dimensions, got shape {shape}")
    rows, cols = shape[0], math.prod(shape[1:])
    flat = as_generator(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))  # a uniform distribution over orthogonal matrices
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


glorot_uniform, glorot_normal = xavier_uniform, xavier_normal
he_uniform, he_normal = kaiming_uniform, kaiming_normal
