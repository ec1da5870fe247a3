"""The LSTM's per-time-step gate arithmetic as Numba kernels (see :mod:`nnflow.jit`).

Each is one pass over a step's ``(H, N)`` blocks (feature-major, as in the workspace of
:func:`nnflow.layers.recurrence_ops.lstm_layer`), replacing the ~6 NumPy calls of the forward
step and the ~14 of the backward step that :mod:`~nnflow.layers.recurrence_ops` runs without
Numba. The GEMMs and the ``tanh`` calls stay in NumPy (BLAS, and SIMD transcendental
functions). The formulas are those of the NumPy path, term for term.

The loops run over the raveled (C-contiguous) blocks with one index: written over two
indices, or with a branch inside, the backward loop ran 2.4x slower (measured: 30 against
12.6 us a step for H = 128, N = 32; NumPy's 14 calls take ~100 us).

>>> act = np.zeros((4, 1)); c = np.zeros((1, 1))
>>> gates_forward(act, np.ones((1, 1)), c, 0.5)  # tanh(z/2) = 0: sigmoids 1/2, g = 0
>>> act.ravel().tolist(), c.item()
([0.5, 0.5, 0.0, 0.5], 0.5)
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctest)

from ..jit import Kernel

__all__ = ["GATES_FORWARD", "GATES_BACKWARD", "gates_forward", "gates_backward"]


def gates_forward(act, c_prev, c, half):
    """One forward step after ``act = tanh(W [h; x; 1])`` (rows i, f, g, o; the i, f, o rows
    of ``W`` halved, so they hold ``tanh(z / 2)``): turns i, f, o into sigmoids in place
    (``(1 + tanh(z / 2)) / 2``) and writes ``c = f c_prev + i g``. All C-contiguous; ``half``
    is 0.5 in the arrays' dtype (a Python float would make Numba compute float32 data in
    float64)."""
    s = c.size
    act, c_prev, c = act.ravel(), c_prev.ravel(), c.ravel()
    for k in range(s):
        i = act[k] * half + half
        f = act[s + k] * half + half
        act[k] = i
        act[s + k] = f
        act[3 * s + k] = act[3 * s + k] * half + half
        c[k] = f * c_prev[k] + i * act[2 * s + k]


def gates_backward(dh, u, dc, f_next, act, tc, c_prev, dz, out, row, one):
    """One backward step. With ``dh`` the cotangent of the step's output ``h``, ``u = W_hh^T
    dz_{t+1}`` and ``f_next = f_{t+1}`` (zeros and ones at the last step): ``dh += u``,
    ``dc = dc f_next + dh o (1 - tanh(c)^2)`` (both in place) and the gate cotangents
    ``dz = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)]`` ``(4H, N)``,
    also written transposed to ``out[row : row + N]`` (``out`` is ``(T N, 4H)``-shaped, the
    layout of the weight gradients' GEMM; each step fills one contiguous block, while ``dz`` is
    in cache). All C-contiguous; ``one`` is 1 in the arrays' dtype."""
    s, n = dh.size, dh.shape[1]
    dh, u, dc, f_next = dh.ravel(), u.ravel(), dc.ravel(), f_next.ravel()
    act, tc, c_prev, dz = act.ravel(), tc.ravel(), c_prev.ravel(), dz.ravel()
    for k in range(s):
        i = act[k]
        f = act[s + k]
        g = act[2 * s + k]
        o = act[3 * s + k]
        t = tc[k]
        d_h = dh[k] + u[k]
        d_c = dc[k] * f_next[k] + d_h * (o * (one - t * t))
        dh[k] = d_h
        dc[k] = d_c
        dz[k] = d_c * g * (i * (one - i))
        dz[s + k] = d_c * c_prev[k] * (f * (one - f))
        dz[2 * s + k] = d_c * i * (one - g * g)
        dz[3 * s + k] = d_h * t * (o * (one - o))
    for m in range(n):  # out[row + m, :] = dz[:, m]
        dst = out[row + m]
        for q in range(4 * s // n):
            dst[q] = dz[q * n + m]


GATES_FORWARD = Kernel(gates_forward)
GATES_BACKWARD = Kernel(gates_backward)
