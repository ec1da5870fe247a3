"""Three copy/add loops of the convolution primitives as Numba kernels (see :mod:`nnflow.jit`).

- ``col2im_flat`` (``conv_transpose2d``, flat layout of :mod:`~nnflow.layers.convolution`):
  col2im adds each kernel offset's GEMM rows into the output grid shifted by that offset;
  NumPy does it as ``kh * kw`` passes over the whole ``(C, grid)`` output (each reading and
  writing it from memory). The kernel does the same adds channel by channel, so one channel's
  grid row (``N Hp Wp`` values: 173 KB for 64 26x26 images in float32) stays in cache for its
  ``kh * kw`` adds and the output is written once. Each entry gets the same additions in the
  same order (offset by offset, ``(0, 0)`` first) as in the NumPy path: bitwise equal results.
- ``im2col_compact`` (``conv2d_weight``'s compact columns, stride 1): the copy of the window
  view, one output row of ``Wo`` values at a time (NumPy's strided copy handles runs of 24
  values less well). A copy: bitwise equal.
- ``grid_pad`` (``conv_transpose2d``'s ``dy`` on the flat grid): values and the grid's zeros
  written in one pass, instead of a zero fill and a strided copy.

Measured inside the ConvNet training step of ``benchmarks/`` (64 images, 16 -> 32 channels
of 26x26, float32, 2 cores; each primitive's own time, median of 60 calls): the data gradient
``conv_transpose2d`` 9.2 -> 8.3 ms by col2im and 8.2 -> 7.8 ms by the grid, the filter
gradient ``conv2d_weight`` 7.9 -> 7.4 ms.
Tried and left out: a flat im2col kernel (slower than NumPy's copy of contiguous runs), a
strided (stride > 1) compact one (strided slices do not vectorise: 2.5x slower), and running
the kernels in two Python threads (``nogil``): faster alone, slower inside the step, where
OpenBLAS's threads hold the second core.

>>> cols = np.ones((1, 2, 3)); out = np.empty((1, 4))
>>> col2im_flat(cols, np.array([0, 1]), out); out.tolist()
[[1.0, 2.0, 2.0, 1.0]]
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctest)

from ..jit import Kernel

__all__ = [
    "COL2IM_FLAT",
    "IM2COL_COMPACT",
    "GRID_PAD",
    "col2im_flat",
    "im2col_compact",
    "grid_pad",
]


def col2im_flat(cols, shifts, out):
    """``out[c] = 0; out[c, s_k : s_k + m] += cols[c, k]`` for the offsets ``k`` in order
    (``cols (C, K, m)``, ``shifts[0] = 0``, ``out (C, size)``, all
    C-contiguous); offset 0 writes instead of adding to zeros, as the NumPy path does."""
    nc, nk, m = cols.shape
    size = out.shape[1]
    for c in range(nc):
        dst = out[c]
        src = cols[c, 0]
        for p in range(m):
            dst[p] = src[p]
        for p in range(m, size):
            dst[p] = 0
        for k in range(1, nk):
            s = shifts[k]
            src = cols[c, k]
            part = dst[s : s + m]
            for p in range(m):
                part[p] += src[p]


COL2IM_FLAT = Kernel(col2im_flat)


def im2col_compact(t, out, dh, dw):
    """``out[c, i, j, n, p, q] = t[c, n, p + i dh, q + j dw]``: the compact im2col matrix of
    a stride-1 convolution (``t (C, N, Hp, Wp)`` the padded channel-major input, ``out (C, kh,
    kw, N, Ho, Wo)``, both C-contiguous), one output row of ``Wo`` values at a time. (With a
    stride the source rows are strided slices, which did not vectorise: 2.5x slower than
    NumPy's copy; those stay in NumPy.)"""
    nc, kh, kw, nn, ho, wo = out.shape
    for c in range(nc):
        for i in range(kh):
            for j in range(kw):
                for n in range(nn):
                    for p in range(ho):
                        src = t[c, n, p + i * dh, j * dw : j * dw + wo]
                        dst = out[c, i, j, n, p]
                        for q in range(wo):
                            dst[q] = src[q]


def grid_pad(t, g):
    """``g[..., :Ho, :Wo] = t``, zeros elsewhere, in one pass (``t (O, N, Ho, Wo)`` and ``g
    (O, N, Hp, Wp)`` C-contiguous): ``dy`` on the flat grid of ``conv_transpose2d``."""
    no, nn, ho, wo = t.shape
    hp, wp = g.shape[2], g.shape[3]
    for o in range(no):
        for n in range(nn):
            for p in range(hp):
                dst = g[o, n, p]
                if p < ho:
                    src = t[o, n, p]
                    for q in range(wo):
                        dst[q] = src[q]
                    for q in range(wo, wp):
                        dst[q] = 0
                else:
                    for q in range(wp):
                        dst[q] = 0


IM2COL_COMPACT = Kernel(im2col_compact)
GRID_PAD = Kernel(grid_pad)
