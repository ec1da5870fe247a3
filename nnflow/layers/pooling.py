"""Pooling layers over ``(N, C, H, W)``: ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
``GlobalAvgPool2d``.

Max and average pooling call the primitives of ``nnflow.layers.pooling_ops`` (one strided view
per kernel offset, never a loop over pixels, with their own derivative rules). Adaptive
pooling is two small matrix products with averaging matrices, traced as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from .conv import _pair
from .model import Model, ShapeError, check_rank, describe
from .pooling_ops import avg_pool2d, max_pool2d, pool_output_size

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "GlobalAvgPool2d"]


class _Pool2d(Model):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half the kernel {self.kernel_size}"
            )

    def _check(self, x):
        check_rank(self, x, (4,), "(N, C, H, W)")
        if min(pool_output_size(x.shape, self.kernel_size, self.stride, self.padding)) < 1:
            raise ShapeError(self, f"input {describe(x)} is smaller than the kernel")

    def extra_repr(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        text = k if self.stride == self.kernel_size else f"{k}, stride={self.stride}"
        return text + (f", padding={self.padding}" if any(self.padding) else "")


class MaxPool2d(_Pool2d):
    """The maximum over each ``kh x kw`` window (``stride`` defaults to the kernel size;
    padding counts as ``-inf``). A tie sends the gradient to the window's first maximum, as
    PyTorch does.

    >>> MaxPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """

    def forward(self, x: Any) -> Any:
        self._check(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """The mean over each ``kh x kw`` window; zero padding counts in the mean
    (``count_include_pad=True``, PyTorch's default).

    >>> AvgPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """

    def forward(self, x: Any) -> Any:
        self._check(x)
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


def _averaging_matrix(n_out: int, n_in: int, like) -> Any:
    """``(n_out, n_in)``: row ``i`` averages PyTorch's adaptive window ``i``."""
    m = np.zeros((n_out, n_in), dtype=np.dtype(like.dtype))
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:stop] = 1.0 / (stop - start)
    xp = get_array_module(like)
    return m if xp is np else xp.asarray(m)


class AdaptiveAvgPool2d(Model):
    """Average pooling to a fixed ``output_size`` ``(Ho, Wo)`` whatever the input size, with
    PyTorch's windows ``[floor(i H / Ho), ceil((i + 1) H / Ho))``.

    >>> AdaptiveAvgPool2d(1)(np.ones((2, 3, 5, 7))).shape
    (2, 3, 1, 1)
    """

    def __init__(self, output_size: Any):
        self.output_size = _pair(output_size, "output_size", "AdaptiveAvgPool2d")

    def forward(self, x: Any) -> Any:
        check_rank(self, x, (4,), "(N, C, H, W)")
        (ho, wo), (h, w) = self.output_size, x.shape[2:]
        if (ho, wo) == (1, 1):
            return np.mean(x, axis=(2, 3), keepdims=True)
        rows, cols = _averaging_matrix(ho, h, x), _averaging_matrix(wo, w, x)
        return rows @ x @ cols.T

    def extra_repr(self) -> str:
        return "x".join(map(str, self.output_size))


class GlobalAvgPool2d(Model):
    """The mean over the spatial axes: ``(N, C, H, W) -> (N, C)``.

    >>> GlobalAvgPool2d()(np.ones((2, 3, 4, 4))).shape
    (2, 3)
    """

    def forward(self, x: Any) -> Any:
        check_rank(self, x, (4,), "(N, C, H, W)")
        return np.mean(x, axis=(2, 3))
