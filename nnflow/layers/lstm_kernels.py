"""The LSTM's per-time-step gate arithmetic as Numba kernels (see :mod:`nnflow.jit`).

Each is one pass over a step's ``(H, N)`` blocks of the workspace of
:func:`nnflow.layers.recurrence_ops.lstm_layer` (feature-major ``(T + 1, R, N)``), and takes
the workspace and the step's index rather than a dozen slices (each array argument costs
Numba's dispatcher ~0.2 us). Where NumPy's BLAS can be called from kernels
(:mod:`nnflow.blas`), ``forward_f32`` and ``backward_steps`` run a whole loop, GEMMs included,
in one call; otherwise the callers loop in Python over the step kernels and NumPy's matmul.

- ``gates_forward`` (float64, and float32 without :func:`step_forward_f32`): after NumPy's
  ``tanh`` of the step's pre-activations, the sigmoids and ``c_t`` (the ~6 NumPy calls of the
  NumPy path, term for term); NumPy's ``tanh(c_t)`` and ``h_t = o tanh(c_t)`` follow.
- ``step_forward_f32`` (float32): the whole step after the GEMM, ``tanh`` included, as one pass:
  ``tanh`` is the rational approximation that XLA and Eigen use for float32 (odd degree 13 over
  even degree 6, +-1 from +-7.9053 on, ``x`` itself below 4e-4), which vectorises (NumPy's
  ``tanh`` is a call per array; Numba's ``math.tanh`` a libm call per entry), compiled with
  fused multiply-adds (``fastmath={"contract"}``: 17.5 -> 10 us a step alone). Against
  ``tanh`` in float64 it is within 6 float32 ulps everywhere, NumPy's float32 ``tanh`` within
  1.4; NaN stays NaN and +-inf give +-1. Measured on the LSTM benchmark's step (H = 128,
  N = 32, 2 cores): ~37 -> ~12 us after the GEMM inside the loop, before the FMAs.
- ``gates_backward``: the backward step's 14 NumPy calls, writing the step's gate cotangents
  as one contiguous ``(4H, N)`` block (blocks of the backward's output; a packed ``(4H,
  (T + 1) N)`` layout, runs of ``N`` 6.5 KB apart, cost ~20 us a step written inside the loop
  and 0.3-0.5 ms copied after it, and is no longer needed: ``backward_steps`` accumulates the
  weight gradient step by step, ``dz_t`` and the step's operands still in cache).

The element loops run over raveled C-contiguous blocks with one index: written over two
indices, or with a branch inside, the backward loop ran 2.4x slower (30 against 12.6 us a
step for H = 128, N = 32; NumPy's 14 calls take ~100 us). The kernels compile with NumPy's
error model (:mod:`nnflow.jit`): a division does not check for zero, so it vectorises.

>>> ws = np.zeros((2, 8, 1))  # T=1, N=1, H=1, no input: rows h, 1, c, tanh(c), i, f, g, o
>>> gates_forward(ws, 0, 2, np.ones((1, 1)), 0.5)  # tanh(z/2) = 0: sigmoids 1/2, g = 0
>>> ws[0, 4:, 0].tolist(), float(ws[0, 2, 0])  # c = f c_prev + i g
([0.5, 0.5, 0.0, 0.5], 0.5)
"""

from __future__ import annotations

import numpy as np

from ..blas import matmul_into
from ..jit import Kernel

__all__ = [
    "GATES_FORWARD",
    "STEP_FORWARD_F32",
    "GATES_BACKWARD",
    "FORWARD_F32",
    "BACKWARD_STEPS",
    "forward_f32",
    "backward_steps",
    "gates_forward",
    "step_forward_f32",
    "gates_backward",
    "tanh_f32",
]

# tanh's float32 rational approximation: odd numerator, even denominator, clamp, tiny cutoff
_CLAMP = np.float32(7.90531110763549805)
_ONE = np.float32(1.0)
_TINY = np.float32(0.0004)
_ALPHA = tuple(np.float32(a) for a in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16,
))  # fmt: skip
_BETA = tuple(np.float32(b) for b in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06,
))  # fmt: skip
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = _ALPHA
_B0, _B2, _B4, _B6 = _BETA


def tanh_f32(v):
    """``tanh`` of a float32 scalar by the rational approximation above (inlined by Numba)."""
    x = _CLAMP if v > _CLAMP else v
    x = -_CLAMP if x < -_CLAMP else x
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    y = _ONE if v >= _CLAMP else p / q  # +-1 from the clamp on (exactly, whatever the FMAs)
    y = -_ONE if v <= -_CLAMP else y
    return v if -_TINY < v < _TINY else y


def gates_forward(ws, t, k, c_prev, half):
    """One forward step after ``act = tanh(W [h; x; 1])`` (``ws[t, k + 2H:]``, rows i, f, g, o;
    the i, f, o rows of ``W`` halved, so they hold ``tanh(z / 2)``): turns i, f, o into
    sigmoids in place (``(1 + tanh(z / 2)) / 2``) and writes ``c = f c_prev + i g`` to
    ``ws[t, k : k + H]``. ``half`` is 0.5 in the arrays' dtype (a Python float would make Numba
    compute float32 data in float64)."""
    s = c_prev.size
    block = ws[t].ravel()
    cp = c_prev.ravel()
    a = k * ws.shape[2]  # c's offset in the block; tanh(c), then i, f, g, o follow
    c = block[a : a + s]  # (separate slices: with offsets into one array the loop did not
    ai = block[a + 2 * s : a + 3 * s]  # vectorise, 6x slower)
    af = block[a + 3 * s : a + 4 * s]
    ag = block[a + 4 * s : a + 5 * s]
    ao = block[a + 5 * s : a + 6 * s]
    for m in range(s):
        i = ai[m] * half + half
        f = af[m] * half + half
        ai[m] = i
        af[m] = f
        ao[m] = ao[m] * half + half
        c[m] = f * cp[m] + i * ag[m]


def step_forward_f32(ws, t, k, c_prev, half):
    """One whole float32 forward step after the GEMM ``ws[t, k + 2H:] = W [h; x; 1]`` (the
    i, f, o rows of ``W`` halved): the activations i, f, g, o in place, ``c``, ``tanh(c)`` and
    ``h = o tanh(c)`` into ``ws[t + 1, :H]``; ``tanh`` is :func:`tanh_f32`. ``c_prev`` is
    ``c_0`` (read at ``t = 0``; later steps read ``c_{t-1}`` from the workspace)."""
    s = c_prev.size
    block = ws[t].ravel()
    a = k * ws.shape[2]
    cp = ws[t - 1].ravel()[a : a + s] if t > 0 else c_prev.ravel()
    c, tc = block[a : a + s], block[a + s : a + 2 * s]
    ai, af = block[a + 2 * s : a + 3 * s], block[a + 3 * s : a + 4 * s]
    ag, ao = block[a + 4 * s : a + 5 * s], block[a + 5 * s : a + 6 * s]
    h_next = ws[t + 1].ravel()[:s]
    for m in range(s):
        i = tanh_f32(ai[m]) * half + half
        f = tanh_f32(af[m]) * half + half
        g = tanh_f32(ag[m])
        o = tanh_f32(ao[m]) * half + half
        cm = f * cp[m] + i * g
        tcm = tanh_f32(cm)
        ai[m] = i
        af[m] = f
        ag[m] = g
        ao[m] = o
        c[m] = cm
        tc[m] = tcm
        h_next[m] = o * tcm


def forward_f32(gemm, w, ws, k, c_prev, half):
    """Every float32 forward step in one call: the step's GEMM ``ws[t, k + 2H:] = w ws[t, :k]``
    (NumPy's BLAS at address ``gemm``, :mod:`nnflow.blas`), then :func:`step_forward_f32`.
    The Python loop over those two calls computes the same, with ~5 us more per step."""
    act = k + 2 * c_prev.shape[0]
    for t in range(ws.shape[0] - 1):
        matmul_into(gemm, w, ws[t, :k], ws[t, act:])
        step_forward_f32(ws, t, k, c_prev, half)


def backward_steps(gemm, dyh, dc, ws, k, c0, dzs, w_t, dw):
    """Every backward step in one call, the last first: ``u = W_hh^T dz_{t+1}`` (``w_t`` is
    ``W_hh^T``, a transposed view; zeros at the last step), :func:`gates_backward`, then the
    step's share of the weight gradient ``dw (+)= dz_t [h_{t-1}; x_t; 1]^T`` while both are
    in cache (``dw`` is ``(4H, K)``; BLAS at address ``gemm``, :mod:`nnflow.blas`)."""
    steps, hidden, n = dyh.shape
    u = np.zeros((hidden, n), dyh.dtype)
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            matmul_into(gemm, w_t, dzs[t + 1], u)
        gates_backward(dyh, u, dc, ws, t, k, c0, dzs)
        matmul_into(gemm, dzs[t], ws[t, :k].T, dw, t < steps - 1)


def gates_backward(dyh, u, dc, ws, t, k, c0, dzs):
    """Backward step ``t``. With ``dyh[t]`` the cotangent of the step's output ``h`` and ``u =
    W_hh^T dz_{t+1}`` (zeros at the last step, where ``f_{t+1}`` counts as ones): ``dh =
    dyh[t] + u``, ``dc = dc f_{t+1} + dh o (1 - tanh(c)^2)`` (in place) and the gate
    cotangents ``dzs[t] = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)]``
    ``(4H, N)`` (``c_prev`` is ``c0`` at ``t = 0``, else read from the workspace). All
    C-contiguous."""
    s = dc.size
    n = ws.shape[2]
    one = dc.dtype.type(1)
    dh, ur, dcr, dzr = dyh[t].ravel(), u.ravel(), dc.ravel(), dzs[t].ravel()
    block = ws[t].ravel()
    a = k * n
    cp = ws[t - 1].ravel()[a : a + s] if t > 0 else c0.ravel()
    tc = block[a + s : a + 2 * s]
    ai, af = block[a + 2 * s : a + 3 * s], block[a + 3 * s : a + 4 * s]
    ag, ao = block[a + 4 * s : a + 5 * s], block[a + 5 * s : a + 6 * s]
    fn = ws[t + 1].ravel()[a + 3 * s : a + 4 * s]  # f_{t+1} (ones in its place at the end)
    zi, zf, zg, zo = dzr[:s], dzr[s : 2 * s], dzr[2 * s : 3 * s], dzr[3 * s :]
    last = t == dyh.shape[0] - 1
    for m in range(s):
        i = ai[m]
        f = af[m]
        g = ag[m]
        o = ao[m]
        tcm = tc[m]
        d_h = dh[m] + ur[m]
        d_c = dcr[m] * (one if last else fn[m]) + d_h * (o * (one - tcm * tcm))
        dcr[m] = d_c
        zi[m] = d_c * g * (i * (one - i))
        zf[m] = d_c * cp[m] * (f * (one - f))
        zg[m] = d_c * i * (one - g * g)
        zo[m] = d_h * tcm * (o * (one - o))


GATES_FORWARD = Kernel(gates_forward)
# contract: multiply-adds as FMAs (tanh's polynomials; 20 -> 9 us a step alone, and no less
# accurate); not for the other kernels, whose results match NumPy's roundings
STEP_FORWARD_F32 = Kernel(step_forward_f32, helpers=(tanh_f32,), fastmath=frozenset({"contract"}))
GATES_BACKWARD = Kernel(gates_backward)
# whole loops, GEMMs included (NumPy's BLAS through nnflow.blas; without its address the
# callers loop in Python over the step kernels above)
FORWARD_F32 = Kernel(
    forward_f32, helpers=(tanh_f32, step_forward_f32), fastmath=frozenset({"contract"}), blas=True
)
BACKWARD_STEPS = Kernel(backward_steps, helpers=(gates_backward,), blas=True)
