"""Reductions as Numba kernels (see :mod:`nnflow.jit`): one pass, a float64 accumulator.

``sum_squares(x)``, the sum of ``x * x`` over a 1-d run (the mean squared error's reduction),
reads ``x`` once where NumPy's ``np.sum(x * x)`` writes and reads a temporary, and accumulates
in float64 (float32 data are squared in float32, as NumPy does, then summed in float64: more
accurate than NumPy's float32 pairwise sum). The loop may be reassociated (``fastmath``
``reassoc``) so that it vectorises; the order of the additions then depends on the vector
width, not on the data.

>>> import numpy as np
>>> float(sum_squares(np.array([1.0, 2.0, 3.0])))
14.0
"""

from __future__ import annotations

import numpy as np

from .jit import Kernel

__all__ = ["SUM_SQUARES", "sum_squares"]


def sum_squares(x):
    """``sum(x * x)`` over a 1-d array, accumulated in float64."""
    total = 0.0
    for k in range(x.size):
        v = x[k] * x[k]
        total += np.float64(v)
    return total


SUM_SQUARES = Kernel(sum_squares, fastmath=frozenset({"reassoc"}))
