"""``relu`` and its gradient as Numba kernels (see :mod:`nnflow.jit`).

``np.maximum(x, 0)`` runs at about a third of memory speed on float32 (its NaN handling), and
the gradient ``dy * (y > 0)`` is two passes (a ``bool`` mask, then a mixed-type multiply that
NumPy casts in buffered chunks). These are one vectorised pass each over the arrays' memory
(1-d views of dense arrays laid out alike), with the NumPy formulas' exact results:

- ``relu_forward``: ``np.maximum(x, 0)`` as NumPy computes it (``x`` where ``x > 0`` or ``x``
  is NaN, else ``+0.0``: ``-0.0`` becomes ``+0.0``, NaN stays NaN);
- ``relu_backward``: ``dy * (1 if y > 0 else 0)``, the same product as ``dy * (y > 0)``
  (signed zeros, and NaN where ``dy`` is not finite, as NumPy gives them).

Measured on the ConvNet step's arrays (float32, 64x32x24x24 channel-major, 2 cores): forward
0.34 against 0.96 ms, gradient 0.58 against 1.8 ms.

>>> x = np.array([-1.0, 0.0, 2.0]); out = np.empty(3)
>>> relu_forward(x, out, 0.0); out.tolist()
[0.0, 0.0, 2.0]
>>> relu_backward(np.array([5.0, 5.0, 5.0]), out, out, 0.0, 1.0); out.tolist()
[0.0, 0.0, 5.0]
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctest)

from .jit import Kernel

__all__ = ["RELU_FORWARD", "RELU_BACKWARD", "relu_forward", "relu_backward"]


def relu_forward(x, out, zero):
    """``out = np.maximum(x, 0)`` over 1-d arrays (``out`` may be ``x``); ``zero`` is 0 in the
    arrays' dtype."""
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v if (v > zero or v != v) else zero


def relu_backward(dy, y, out, zero, one):
    """``out = dy * (y > 0)`` over 1-d arrays (``out`` may be ``dy`` or ``y``); ``zero`` and
    ``one`` in ``dy``'s dtype."""
    for i in range(dy.shape[0]):
        out[i] = dy[i] * (one if y[i] > zero else zero)


RELU_FORWARD = Kernel(relu_forward)
RELU_BACKWARD = Kernel(relu_backward)
