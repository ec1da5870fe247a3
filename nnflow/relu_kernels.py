"""``relu`` and its gradient as Numba kernels (see :mod:`nnflow.jit`).

``np.maximum(x, 0)`` runs at about a third of memory speed on float32 (its NaN handling; on a
strided input, such as a convolution's output cropped from its GEMM grid, slower still), and
the gradient ``dy * (y > 0)`` is two passes (a ``bool`` mask, then a mixed-type multiply that
NumPy casts in buffered chunks). These are one vectorised pass each, with the NumPy formulas'
exact results:

- ``relu_forward``: ``np.maximum(x, 0)`` as NumPy computes it (``x`` where ``x > 0`` or ``x``
  is NaN, else ``+0.0``: ``-0.0`` becomes ``+0.0``, NaN stays NaN);
- ``relu_backward``: ``dy * (1 if y > 0 else 0)``, the same product as ``dy * (y > 0)``
  (signed zeros, and NaN where ``dy`` is not finite, as NumPy gives them).

Each array is passed as a 1-d buffer from its first entry plus ``rows``: ``(n0, n1, n2)`` and,
per array, ``(offset, stride0, stride1)`` in entries: entry ``(i, j, k)`` lies at ``offset +
i stride0 + j stride1 + k``. ``nnflow.functional`` builds the description: arrays of one
layout with no gaps in memory (C-contiguous, or any axis order such as a channel-major
``(N, C, H, W)``) go as one run, ``(1, 1, size)``, set up in ~1 us; arrays whose innermost
axis (in memory order) is contiguous and whose other axes merge into two, such as a
convolution's output cropped from its GEMM grid, go as rows; anything else (a strided
innermost axis, broadcasts, mixed layouts) runs NumPy. The inner loop runs over 1-d slices:
indexed as ``buf[base + k]`` the loop did not vectorise (2-3x slower).

Measured alone (float32, 2 cores): on dense runs the kernels take 0.3-0.5x NumPy's time from
4K to 1.2M entries (gradient of 64x32x24x24: 0.51 against 0.80 ms; 128x512: 8 against 34 us,
the MLP's shapes); on cropped arrays forward 0.26 against 0.67 ms (64x16x26x26 cut from a
28x28 grid). Inside the ConvNet training step the two gradients take 1.3 + 0.8 against 1.7 +
1.1 ms. (An earlier version sent dense arrays to NumPy: building the rows description cost
~150 us a call, which had made dense arrays look faster in NumPy.)

>>> x = np.array([-1.0, 0.0, 2.0]); out = np.empty(3)
>>> rows = (1, 1, 3), (0, 0, 0)
>>> relu_forward(x, out, *rows[0], *rows[1], *rows[1], 0.0, False); out.tolist()
[0.0, 0.0, 2.0]
>>> relu_backward(np.array([5.0, 5.0, 5.0]), out, out, *rows[0], *rows[1], *rows[1], *rows[1],
...               0.0, 1.0, 2); out.tolist()
[0.0, 0.0, 5.0]
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctest)

from .jit import Kernel

__all__ = ["RELU_FORWARD", "RELU_BACKWARD", "relu_forward", "relu_backward"]


def relu_forward(x, out, n0, n1, n2, xo, x0, x1, oo, o0, o1, zero, inplace):
    """``out = np.maximum(x, 0)`` over the rows described; ``inplace``: ``out`` is ``x`` (the
    loop then names one array: given the same memory under two names, LLVM's overlap check
    fails and the loop runs unvectorised, ~4x slower). ``zero`` is 0 in the arrays' dtype."""
    for i in range(n0):
        for j in range(n1):
            dst = out[oo + i * o0 + j * o1 :][:n2]
            if inplace:  # (x not named: it may be a read-only view of the same memory)
                for k in range(n2):
                    v = dst[k]
                    dst[k] = v if (v > zero or v != v) else zero
                continue
            src = x[xo + i * x0 + j * x1 :][:n2]
            for k in range(n2):
                v = src[k]
                dst[k] = v if (v > zero or v != v) else zero


def relu_backward(dy, y, out, n0, n1, n2, do, d0, d1, yo, y0, y1, oo, o0, o1, zero, one, alias):
    """``out = dy * (y > 0)`` over the rows described; ``alias`` 1: ``out`` is ``dy``, 2:
    ``out`` is ``y`` (one name per array, as in :func:`relu_forward`), 0: neither. ``zero``
    and ``one`` in the arrays' dtype."""
    for i in range(n0):
        for j in range(n1):
            dst = out[oo + i * o0 + j * o1 :][:n2]  # (only out is written)
            if alias == 1:
                v = y[yo + i * y0 + j * y1 :][:n2]
                for k in range(n2):
                    dst[k] = dst[k] * (one if v[k] > zero else zero)
            elif alias == 2:
                g = dy[do + i * d0 + j * d1 :][:n2]
                for k in range(n2):
                    dst[k] = g[k] * (one if dst[k] > zero else zero)
            else:
                g = dy[do + i * d0 + j * d1 :][:n2]
                v = y[yo + i * y0 + j * y1 :][:n2]
                for k in range(n2):
                    dst[k] = g[k] * (one if v[k] > zero else zero)


RELU_FORWARD = Kernel(relu_forward)
RELU_BACKWARD = Kernel(relu_backward)
