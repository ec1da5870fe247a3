"""Optimizer updates as Numba kernels (see :mod:`nnflow.jit`): one pass per parameter.

``sgd_update(p, g, lr)`` is ``p -= g * lr`` over 1-d runs (:func:`nnflow.jit.flat_views`):
NumPy writes ``g * lr`` into a scratch array and reads it back (two passes over a parameter's
size); the kernel reads ``p`` and ``g`` once and writes ``p``, with the same rounding (the
product rounded, then the difference; no fused multiply-add), so the results are bitwise
NumPy's. Measured on the MLP step's 535K float32 parameters (2 cores): 0.65 -> 0.41-0.49 ms.

>>> import numpy as np
>>> p = np.ones(3); sgd_update(p, np.array([1.0, 2.0, 4.0]), 0.5); p.tolist()
[0.5, 0.0, -1.0]
"""

from __future__ import annotations

from ..jit import Kernel

__all__ = ["SGD_UPDATE", "sgd_update"]


def sgd_update(p, g, lr):
    """``p -= g * lr`` over 1-d arrays; ``lr`` in their dtype."""
    for k in range(p.size):
        p[k] = p[k] - g[k] * lr


SGD_UPDATE = Kernel(sgd_update)
