"""The LSTM recurrence as one primitive, with backpropagation through time as its rule.

Traced step by step, an LSTM of ``T`` steps records ~15 small operations per step, and the
eager interpreter's cost per operation (not the arithmetic) dominates: about 15x PyTorch's
fused ``nn.LSTM`` at sequence 50, batch 32, hidden 128. ``lstm_recurrence`` runs the whole
time loop as one tape node on the raw arrays (the input projection ``x W_ih^T + b`` stays a
single ``linear`` GEMM outside it), and its rule is backpropagation through time written with
NumPy calls: gate activations recomputed for all steps at once from the stored ``h``/``c``
(one GEMM), then the sequential loop of small operations, one GEMM per step, and one GEMM for
``dW_hh``. Being NumPy calls, the rule is traced when differentiated again, so second-order
derivatives still work (slowly, step by step).

The primitive takes its arrays as ``*arrays`` so that the engine calls the rule once for all
four cotangents (a rule per argument would run the loop four times).

>>> gx, h0 = np.zeros((2, 3, 8)), np.zeros((2, 2))
>>> lstm_recurrence(gx, h0, h0, np.zeros((8, 2))).shape  # [h, c, i, f, g, o] per step
(2, 3, 12)
"""

from __future__ import annotations

import numpy as np

from .. import ad
from ..ad.rules import Case, register_cases
from ..backend import get_array_module

__all__ = ["lstm_recurrence"]


def _sigmoid_into(z, out):
    """``out = sigmoid(z) = (1 + tanh(z / 2)) / 2``: finite for any z, three in-place passes."""
    xp = get_array_module(z)
    xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


@ad.primitive
def lstm_recurrence(*arrays):
    """``lstm_recurrence(gx, h0, c0, weight_hh)``: run PyTorch's LSTM cell over time.

    Args:
        gx: ``(N, T, 4H)`` input projections ``x_t W_ih^T + b_ih + b_hh``, gates i, f, g, o.
        h0, c0: ``(N, H)`` initial state.
        weight_hh: ``(4H, H)``.

    Returns:
        ``(N, T, 6H)``: per step ``[h, c, i, f, g, o]`` (the gate activations are kept for
        the backward pass, as PyTorch's fused kernel keeps its workspace).
    """
    gx, h0, c0, weight_hh = arrays
    xp = get_array_module(gx)
    n, steps, four_h = gx.shape
    hidden = four_h // 4
    dtype = np.result_type(gx, h0, c0, weight_hh)
    out = xp.empty((n, steps, 6 * hidden), dtype=dtype)
    gates = xp.empty((n, four_h), dtype=dtype)
    h, c, w_t = h0, c0, weight_hh.T
    for t in range(steps):
        xp.matmul(h, w_t, out=gates)
        gates += gx[:, t]
        act = out[:, t, 2 * hidden :]
        _sigmoid_into(gates, act)
        i, f, g, o = (act[:, k * hidden : (k + 1) * hidden] for k in range(4))
        xp.tanh(gates[:, 2 * hidden : 3 * hidden], out=g)
        c_new, h_new = out[:, t, hidden : 2 * hidden], out[:, t, :hidden]
        xp.multiply(f, c, out=c_new)
        xp.multiply(i, g, out=h_new)  # h_new as scratch for i * g
        c_new += h_new
        xp.tanh(c_new, out=h_new)
        h_new *= o
        h, c = h_new, c_new
    return out


@ad.diffrule(lstm_recurrence, "arrays")
def _lstm_recurrence_grads(dy, y, gx, h0, c0, weight_hh):
    """Backpropagation through time: the cotangents of ``[gx, h0, c0, weight_hh]``.

    Every output (``h``, ``c`` and the gate activations) may carry a cotangent; the gate
    parts are zero when only ``h``/``c`` are used, and cost one vectorised pass.
    """
    n, steps = gx.shape[:2]
    hidden = weight_hh.shape[1]
    hs, cs = y[:, :, :hidden], y[:, :, hidden : 2 * hidden]
    i, f, g, o = (y[:, :, (2 + k) * hidden : (3 + k) * hidden] for k in range(4))
    c_first = np.expand_dims(np.broadcast_to(c0, (n, hidden)), 1)
    c_prev = np.concatenate([c_first, cs[:, :-1]], axis=1)
    tc = np.tanh(cs)
    # the local derivatives of each pre-activation, for all steps at once
    si, sf, so = i * (1 - i), f * (1 - f), o * (1 - o)
    sg = 1 - g * g
    d_i, d_f, d_g, d_o, d_c = g * si, c_prev * sf, i * sg, tc * so, o * (1 - tc * tc)
    # cotangents arriving at the gate activations directly (zero in the layers' use)
    dz_direct = dy[:, :, 2 * hidden :] * np.concatenate([si, sf, sg, so], axis=-1)
    dh_next = dc_next = None
    dgates = []
    for t in range(steps - 1, -1, -1):
        dh = dy[:, t, :hidden] if dh_next is None else dy[:, t, :hidden] + dh_next
        dc = dy[:, t, hidden : 2 * hidden] + dh * d_c[:, t]
        if dc_next is not None:
            dc = dc + dc_next
        dgate = np.concatenate(
            [dc * d_i[:, t], dc * d_f[:, t], dc * d_g[:, t], dh * d_o[:, t]], axis=-1
        )
        dgate = dgate + dz_direct[:, t]
        dgates.append(dgate)
        dh_next, dc_next = dgate @ weight_hh, dc * f[:, t]
    dz = np.stack(dgates[::-1], axis=1)
    h_first = np.expand_dims(np.broadcast_to(h0, (n, hidden)), 1)
    h_prev = np.concatenate([h_first, hs[:, :-1]], axis=1)
    d_weight = np.reshape(dz, (-1, 4 * hidden)).T @ np.reshape(h_prev, (-1, hidden))
    return [dz, dh_next, dc_next, d_weight]


def _cases() -> list[Case]:
    rng = np.random.default_rng(0)
    n, steps, hidden = 2, 3, 2
    arrays = (
        rng.normal(size=(n, steps, 4 * hidden)),
        rng.normal(size=(n, hidden)),
        rng.normal(size=(n, hidden)),
        rng.normal(size=(4 * hidden, hidden)),
    )
    return [Case(lstm_recurrence, lstm_recurrence, arrays, "sequence")]


register_cases(_cases())
