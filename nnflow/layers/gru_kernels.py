"""The GRU's loops over time as Numba kernels, their GEMMs included (see :mod:`nnflow.jit`).

Each kernel runs a whole loop of :mod:`nnflow.layers.gru_ops` in one call: per step one GEMM
by NumPy's own BLAS (:mod:`nnflow.blas`) and one pass over the step's ``(H, N)`` blocks of the
workspace ``(T + 1, 10H + 1, N)``, raveled with one index (as the LSTM's kernels:
:mod:`nnflow.layers.lstm_kernels`). The callers fall back to their NumPy loops without Numba
or without NumPy's BLAS address.

- ``gru_forward_f32`` (float32): ``gh = [W_hh | b_hh] [h; 1]``, then ``r, z`` (sigmoids as
  ``(1 + tanh(a / 2)) / 2``, as the NumPy loop), ``n = tanh(gx_n + r gh_n)`` and ``h' = n + z
  (h - n)``; ``tanh`` is the LSTM's float32 rational approximation (within 6 ulps), compiled
  with fused multiply-adds. float64 keeps NumPy's loop and ``tanh``.
- ``gru_backward_steps`` (both dtypes): the 19 NumPy calls of a backward step in one pass,
  then ``d h_{t-1} = dh z + W_hh^T dgh`` with the GEMM accumulating into ``dh z``.

>>> ws = np.zeros((2, 11, 1), np.float32)  # T=1, N=1, H=1: rows h, 1, gh (3), r, z, n, gx (3)
>>> ws[0, 1] = 1
>>> w = np.zeros((3, 2), np.float32)
>>> from nnflow.blas import gemm_address
>>> address = gemm_address(np.float32)
>>> if address is not None:
...     gru_forward_f32(address, w, ws, 1, np.float32(0.5))  # all zero: r = z = 1/2, n = 0
...     assert ws[0, 5:8, 0].tolist() == [0.5, 0.5, 0.0] and ws[1, 0, 0] == 0.0
"""

from __future__ import annotations

import numpy as np

from ..blas import matmul_into
from ..jit import Kernel
from .lstm_kernels import tanh_f32

__all__ = ["GRU_FORWARD_F32", "GRU_BACKWARD_STEPS", "gru_forward_f32", "gru_backward_steps"]


def gru_forward_f32(gemm, w, ws, hidden, half):
    """Every float32 forward step: the workspace's ``gh``, ``r, z``, ``n`` rows and the next
    block's ``h``, given its ``h_0``, ones and ``gx`` rows (module docstring)."""
    n = ws.shape[2]
    s = hidden * n
    gh = hidden + 1  # row offsets: gh, (r, z), n, gx
    rz = gh + 3 * hidden
    cand = rz + 2 * hidden
    gx = cand + hidden
    for t in range(ws.shape[0] - 1):
        matmul_into(gemm, w, ws[t, :gh], ws[t, gh:rz])
        block = ws[t].ravel()
        h_prev = block[:s]
        ghr, ghz, ghn = (
            block[gh * n : gh * n + s],
            block[(gh + hidden) * n : rz * n - s],
            block[rz * n - s : rz * n],
        )
        r_out, z_out = block[rz * n : rz * n + s], block[rz * n + s : cand * n]
        n_out = block[cand * n : gx * n]
        gxr, gxz, gxn = (
            block[gx * n : gx * n + s],
            block[gx * n + s : gx * n + 2 * s],
            block[gx * n + 2 * s : gx * n + 3 * s],
        )
        h_next = ws[t + 1].ravel()[:s]
        for m in range(s):
            r = tanh_f32((gxr[m] + ghr[m]) * half) * half + half
            z = tanh_f32((gxz[m] + ghz[m]) * half) * half + half
            c = tanh_f32(r * ghn[m] + gxn[m])
            r_out[m] = r
            z_out[m] = z
            n_out[m] = c
            h_next[m] = c + z * (h_prev[m] - c)


def gru_backward_steps(gemm, dyh, ws, hidden, out, w_t):
    """Every backward step, the last first: ``out[t]`` the cotangents of the step's ``gx``
    (rows r, z, n), ``out[T, :H]`` that of ``h0`` (rows below left as they are); ``w_t`` is
    ``W_hh^T`` (a transposed view)."""
    steps, _, n = dyh.shape
    s = hidden * n
    one = dyh.dtype.type(1)
    gh = hidden + 1
    rz = gh + 3 * hidden
    cand = rz + 2 * hidden
    carry = np.zeros((hidden, n), dyh.dtype)
    dgh = np.empty((3 * hidden, n), dyh.dtype)
    cr, dgr = carry.ravel(), dgh.ravel()
    for t in range(steps - 1, -1, -1):
        block, d = ws[t].ravel(), out[t].ravel()
        h_prev, ghn = block[:s], block[rz * n - s : rz * n]
        r_in, z_in, n_in = (
            block[rz * n : rz * n + s],
            block[rz * n + s : cand * n],
            block[cand * n : cand * n + s],
        )
        dy = dyh[t].ravel()
        for m in range(s):
            dh = dy[m] + cr[m]
            z = z_in[m]
            r = r_in[m]
            c = n_in[m]
            d_n = dh * (one - z) * (one - c * c)
            d_z = dh * (h_prev[m] - c) * ((one - z) * z)
            d_r = d_n * ghn[m] * ((one - r) * r)
            d[m] = d_r
            d[s + m] = d_z
            d[2 * s + m] = d_n
            dgr[m] = d_r
            dgr[s + m] = d_z
            dgr[2 * s + m] = d_n * r
            cr[m] = dh * z
        matmul_into(gemm, w_t, dgh, carry, True)  # carry = dh z + W_hh^T dgh
    out[steps, :hidden] = carry


GRU_FORWARD_F32 = Kernel(
    gru_forward_f32, helpers=(tanh_f32,), fastmath=frozenset({"contract"}), blas=True
)
GRU_BACKWARD_STEPS = Kernel(gru_backward_steps, blas=True)
