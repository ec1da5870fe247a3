"""A whole LSTM layer as three primitives, with backpropagation through time on raw arrays.

Traced step by step, an LSTM of ``T`` steps records ~15 small operations per step, and the
per-operation cost of the interpreter (not the arithmetic) dominates. Here a layer is:

``ws = lstm_layer(x, h0, c0, weight_ih, weight_hh, bias)``
    the forward pass on raw arrays, returning a *workspace* ``ws`` of shape ``(T + 1, R, N)``
    (feature-major: ``N`` is the batch, the last axis). Block ``t`` holds, in rows,
    ``[h_{t-1} (H); x_t (I); 1; c_t (H); tanh(c_t) (H); i, f, g, o (4H)]``; block ``T`` holds
    ``h_{T-1}`` and zeros. The first ``K = H + I + 1`` rows of a block are the operand of
    the step's one GEMM: ``[W_hh | W_ih | b] @ [h; x_t; 1]`` gives the pre-activations of all
    four gates, with no separate input projection and no bias add (measured 4.7 ms against
    5.8 ms for a projection GEMM plus per-step adds). The i, f, o rows of that stacked weight
    are scaled by 1/2, so one ``tanh`` over the 4H gate rows gives ``tanh(z / 2)`` for them
    (``sigmoid(z) = (1 + tanh(z / 2)) / 2``: two more in-place passes) and ``tanh(z)`` for g.
    Every per-step operation writes into its slot of ``ws`` with ``out=`` (contiguous
    ``(rows, N)`` blocks: strided per-step slices ran ~4x slower).
``out = lstm_outputs(ws, x, h0, c0, weight_ih, weight_hh, bias)``
    ``(T + 1, N, H)``: ``h_1 .. h_T`` then ``c_T``, a contiguous copy. This is what the layer
    differentiates. Its rules do BPTT: ``ws`` is declared non-differentiable (``nodiff``)
    and the rules for the other arguments give the *total* derivative, reading the
    activations cached in ``ws``. So the workspace never receives a cotangent and no
    full-size zero cotangent is ever built for it.
``back = lstm_layer_backward(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)``
    the reverse time loop on raw arrays, ``(T + 1 + E, 4H, N)`` with ``E = ceil(K / N)``:
    blocks ``0 .. T - 1`` hold the cotangents ``dz_t`` of the steps' gate pre-activations
    (PyTorch's gate order in the rows), block ``T`` the cotangent of ``c0`` transposed (rows
    ``:H``; the others zero), and the ``E`` blocks after it hold ``[dW_hh | dW_ih | db]``
    ``(4H, K)`` row-major in their memory (then zeros). Per step it does one GEMM (``W_hh^T
    dz_{t+1}``), the step's gate arithmetic (14 in-place ufunc calls over ``(H, N)`` or
    ``(4H, N)`` buffers that stay in cache, or, with Numba, one kernel of
    :mod:`nnflow.layers.lstm_kernels`) and, with NumPy's BLAS callable from the kernel
    (:mod:`nnflow.blas`), the weight gradient's share ``dz_t [h_{t-1}; x_t; 1]^T`` while both
    are in cache: the whole loop is then one kernel call. Otherwise one ``tensordot`` after
    the loop gives the weight gradient. The rules of ``lstm_outputs`` read the parts with
    ordinary NumPy calls (views; ``dx = W_ih^T dz_t`` for every step, ``dh0``), so a compiled
    step drops those it does not need (``dx`` of the data) and merges the repeated
    ``lstm_layer_backward`` calls (CSE); ``ad.grad`` reuses that call's result across the
    node's rules (a memo hung off the workspace by a weak reference, freed with it).

Higher order: ``lstm_layer_backward`` is a function of ``(dy, x, h0, c0, W, b)`` (``ws`` is a
cache of ``lstm_layer``'s value, ``nodiff``); its rules, and those of ``lstm_layer`` itself,
differentiate *reference* implementations written with traced NumPy calls
(``_reference_workspace``, ``_reference_backward``) through ``ad.vjp``. They are slow (step by
step) and used only when differentiating twice or when ``ws`` itself is used; the registry
test checks all three primitives to second order.

>>> x, h0 = np.zeros((3, 2, 5)), np.zeros((2, 4))  # T=3, N=2, input 5, hidden 4
>>> ws = lstm_layer(x, h0, h0, np.zeros((16, 5)), np.zeros((16, 4)), None)
>>> ws.shape, lstm_outputs(ws, x, h0, h0, np.zeros((16, 5)), np.zeros((16, 4)), None).shape
((4, 34, 2), (4, 2, 4))
"""

from __future__ import annotations

import numpy as np

from .. import ad
from ..ad.rules import Case, register_cases
from ..backend import get_array_module
from ..blas import gemm_address
from .lstm_kernels import (
    BACKWARD_STEPS,
    FORWARD_F32,
    GATES_BACKWARD,
    GATES_FORWARD,
    STEP_FORWARD_F32,
)
from .recurrence_memo import once

__all__ = ["lstm_layer", "lstm_outputs", "lstm_layer_backward"]


def _sizes(x, weight_hh):
    steps, n, inputs = x.shape
    hidden = weight_hh.shape[1]
    return steps, n, inputs, hidden, hidden + inputs + 1


def _dtype(*arrays):
    return np.result_type(*(a for a in arrays if a is not None))


# -- the forward pass ----------------------------------------------------------------------------
@ad.primitive
def lstm_layer(*arrays):
    """``lstm_layer(x, h0, c0, weight_ih, weight_hh, bias)``: PyTorch's LSTM over time.

    Args:
        x: ``(T, N, I)`` inputs, time first.
        h0, c0: ``(N, H)`` initial state.
        weight_ih: ``(4H, I)``; weight_hh: ``(4H, H)``, gates i, f, g, o.
        bias: ``(4H,)`` (``b_ih + b_hh``) or ``None``.

    Returns:
        The workspace ``(T + 1, H + I + 1 + 6H, N)`` described in the module docstring;
        ``lstm_outputs`` reads the layer's outputs from it.
    """
    x, h0, c0, weight_ih, weight_hh, bias = arrays
    xp = get_array_module(x)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    dtype = _dtype(x, h0, c0, weight_ih, weight_hh, bias)
    hh = 2 * hidden
    w = xp.empty((4 * hidden, k), dtype=dtype)  # [W_hh | W_ih | b], i f o rows halved
    w[:, :hidden] = weight_hh
    w[:, hidden : k - 1] = weight_ih
    w[:, k - 1] = 0 if bias is None else bias
    w[:hh] *= 0.5
    w[3 * hidden :] *= 0.5
    ws = xp.empty((steps + 1, k + 6 * hidden, n), dtype=dtype)
    ws[0, :hidden] = xp.transpose(h0)
    ws[:steps, hidden : k - 1] = xp.transpose(x, (0, 2, 1))
    ws[:, k - 1] = 1
    ws[steps, hidden : k - 1] = 0
    ws[steps, k:] = 0
    tmp = xp.empty((hidden, n), dtype=dtype)
    c_prev = xp.ascontiguousarray(xp.transpose(c0))
    loop = FORWARD_F32.get(ws) if dtype == np.float32 else None
    if loop is not None and (gemm := gemm_address(dtype)) is not None:
        loop(gemm, w, ws, k, c_prev, dtype.type(0.5))  # every step, GEMMs included
        return ws
    whole = STEP_FORWARD_F32.get(ws) if dtype == np.float32 else None  # all after the GEMM
    fused = GATES_FORWARD.get(ws) if whole is None else None  # the gate arithmetic only
    half = dtype.type(0.5)
    matmul, tanh, multiply, add = xp.matmul, xp.tanh, xp.multiply, xp.add
    if whole is not None:  # (the loop with the least Python per step)
        operands, acts = ws[:, :k], ws[:, k + hh :]
        for t in range(steps):
            matmul(w, operands[t], out=acts[t])
            whole(ws, t, k, c_prev, half)
        return ws
    for t in range(steps):
        block = ws[t]
        act = block[k + hh :]
        matmul(w, block[:k], out=act)
        tanh(act, act)
        o = act[3 * hidden :]
        c = block[k : k + hidden]
        if fused is not None:
            fused(ws, t, k, c_prev, half)
        else:
            sig = act[:hh]  # i, f: sigmoid from tanh(z / 2)
            multiply(sig, 0.5, sig)
            add(sig, 0.5, sig)
            multiply(o, 0.5, o)
            add(o, 0.5, o)
            multiply(act[hidden:hh], c_prev, c)
            multiply(act[:hidden], act[hh : 3 * hidden], tmp)
            add(c, tmp, c)
        tc = block[k + hidden : k + hh]
        tanh(c, tc)
        multiply(tc, o, ws[t + 1, :hidden])
        c_prev = c
    return ws


@ad.primitive
def lstm_outputs(ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    """The outputs of the LSTM whose workspace ``ws = lstm_layer(x, h0, ...)`` is.

    Returns ``(T + 1, N, H)``: ``h_1 .. h_T``, then ``c_T``. The other arguments are those
    given to ``lstm_layer``: its rules need them (``ws`` is only a cache of activations).
    """
    xp = get_array_module(ws)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    out = xp.empty((steps + 1, n, hidden), dtype=ws.dtype)
    out[:steps] = xp.transpose(ws[1:, :hidden], (0, 2, 1))
    out[steps] = xp.transpose(ws[steps - 1, k : k + hidden])
    return out


# -- the backward pass ---------------------------------------------------------------------------
@ad.primitive
def lstm_layer_backward(dy, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    """Backpropagation through time: the gate cotangents and the weight gradient.

    ``dy`` is the cotangent of ``lstm_outputs(ws, x, ...)`` ``(T + 1, N, H)``. Returns
    ``(T + 1 + E, 4H, N)``, ``E = ceil(K / N)``, ``K = H + I + 1``: blocks ``t < T`` hold step
    ``t``'s ``dz`` (rows: gates i, f, g, o), block ``T`` the cotangent of ``c0`` transposed
    (rows ``:H``, then zeros), the last ``E`` blocks ``[dW_hh | dW_ih | db]`` ``(4H, K)``
    row-major in their memory, then zeros (:func:`_weight_grads` reads it).
    """
    xp = get_array_module(ws)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    dtype = ws.dtype
    out = xp.empty((steps + 1 + _blocks(k, n), 4 * hidden, n), dtype=dtype)
    tail = out[steps + 1 :].reshape(-1)
    if n:
        tail[4 * hidden * k :] = 0
        dw = tail[: 4 * hidden * k].reshape(4 * hidden, k)
    else:  # an empty batch: no blocks hold its (zero) weight gradient
        dw = xp.zeros((4 * hidden, k), dtype=dtype)
    dz = out[:steps]  # each step's block contiguous: the GEMM of the next step reads it
    dyh = xp.empty((steps, hidden, n), dtype=dtype)
    dyh[...] = xp.transpose(dy[:steps], (0, 2, 1))
    dc = xp.empty((hidden, n), dtype=dtype)
    dc[...] = xp.transpose(dy[steps])
    c0_t = xp.transpose(c0)
    loop, gemm = BACKWARD_STEPS.get(dyh, ws, weight_hh), gemm_address(dtype)
    if loop is not None and gemm is not None and steps:  # every step, GEMMs included, one call
        w_t = np.ascontiguousarray(weight_hh, dtype).T  # BLAS: one dtype, rows or columns
        loop(gemm, dyh, dc, ws, k, np.ascontiguousarray(c0_t), dz, w_t, dw)
    else:
        fused = GATES_BACKWARD.get(ws, dy)  # the step's 14 calls below in one Numba pass
        if fused is not None:
            _backward_fused(fused, dyh, dc, ws, c0_t, weight_hh, dz, k)
        else:
            _backward_numpy(xp, dyh, dc, ws, c0_t, weight_hh, dz, k)
        dw[...] = xp.tensordot(dz, ws[:steps, :k], axes=([0, 2], [0, 2]))
    xp.multiply(dc, ws[0, k + 3 * hidden : k + 4 * hidden], out[steps, :hidden])  # dc_0 f_0
    out[steps, hidden:] = 0
    return out


def _blocks(k, n):
    """How many ``(4H, N)`` blocks hold the ``(4H, K)`` weight gradient (none for an empty
    batch, whose weight gradient is zero: :func:`_weight_grads`)."""
    return -(-k // n) if n else 0


def _backward_numpy(xp, dyh, dc, ws, c0_t, weight_hh, dz, k):
    """The loop of ``lstm_layer_backward`` as NumPy (or CuPy) calls: ``dz[t]`` for every
    step, ``dc`` left holding the cotangent of ``c_0``."""
    steps, hidden, n = dyh.shape
    hh, dtype = 2 * hidden, ws.dtype
    u = xp.empty((hidden, n), dtype=dtype)
    s = xp.empty((4 * hidden, n), dtype=dtype)
    m = xp.empty((4 * hidden, n), dtype=dtype)
    m4 = m.reshape(4, hidden, n)
    m_ig = m4[0:3:2]  # the rows of gates i and g, filled by one multiply with [g, i]
    s_g = s[hh : 3 * hidden]
    w_t = xp.transpose(weight_hh)
    g_and_i = ws[:, k + hh :].reshape(steps + 1, 4, hidden, n)[:, 2::-2]  # per step [g, i]
    matmul, multiply, add, subtract = xp.matmul, xp.multiply, xp.add, xp.subtract
    for t in range(steps - 1, -1, -1):
        block = ws[t]
        tc = block[k + hidden : k + hh]
        act = block[k + hh :]
        g, o = act[hh : 3 * hidden], act[3 * hidden :]
        dh = dyh[t]
        if t < steps - 1:  # dh += W_hh^T dz_{t+1}
            matmul(w_t, dz[t + 1], out=u)
            add(dh, u, dh)
            multiply(dc, ws[t + 1, k + 3 * hidden : k + 4 * hidden], dc)  # dc_{t+1} f_{t+1}
        # dc_t += dh o (1 - tanh(c)^2) = dh (o - h tanh(c)), as h = o tanh(c)
        multiply(ws[t + 1, :hidden], tc, u)
        subtract(o, u, u)
        multiply(u, dh, u)
        add(dc, u, dc)
        # the local derivatives: a (1 - a) for i, f, o, 1 - g^2 for g
        subtract(1, act, s)
        multiply(s, act, s)
        multiply(g, g, s_g)
        subtract(1, s_g, s_g)
        # dz = [dc g, dc c_prev, dc i, dh tanh(c)] * s
        multiply(dc, g_and_i[t], m_ig)
        multiply(dc, ws[t - 1, k : k + hidden] if t else c0_t, m[hidden:hh])
        multiply(dh, tc, m[3 * hidden :])
        multiply(m, s, dz[t])


def _backward_fused(kernel, dyh, dc, ws, c0_t, weight_hh, dz, k):
    """The loop of ``lstm_layer_backward`` in Python, each step's gate arithmetic one Numba
    kernel writing ``dz[t]`` (when NumPy's BLAS cannot be called from kernels)."""
    steps, hidden, n = dyh.shape
    u = np.zeros((hidden, n), dtype=ws.dtype)  # the last step: no W_hh^T dz_{t+1}
    c_prev0, w_t = np.ascontiguousarray(c0_t), np.transpose(weight_hh)
    kernel(dyh, u, dc, ws, steps - 1, k, c_prev0, dz)
    for t in range(steps - 2, -1, -1):
        np.matmul(w_t, dz[t + 1], out=u)
        kernel(dyh, u, dc, ws, t, k, c_prev0, dz)


ad.nodiff(lstm_outputs, "ws")
ad.nodiff(lstm_layer_backward, "ws")


def _backward(args):
    return once("backward", lstm_layer_backward, args)


def _dz(*args):
    """The gate cotangents ``(T, 4H, N)`` of every step (args: those of the backward)."""
    return _backward(args)[: np.shape(args[2])[0]]


def _weight_grads(*args):
    """``[dW_hh | dW_ih | db]`` ``(4H, K)``: a view of the backward's last blocks."""
    steps, n, inputs, hidden, k = _sizes(args[2], args[6])
    if n == 0:  # an empty batch: nothing to sum (and no blocks to hold it)
        return np.zeros((4 * hidden, k), dtype=args[1].dtype)
    tail = np.reshape(_backward(args)[steps + 1 :], (-1,))
    return np.reshape(tail[: 4 * hidden * k], (4 * hidden, k))


@ad.diffrule(lstm_outputs, "x")
def _outputs_dx(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    dz = _dz(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)  # (T, 4H, N)
    return np.transpose(np.matmul(np.transpose(weight_ih), dz), (0, 2, 1))


@ad.diffrule(lstm_outputs, "h0")
def _outputs_dh0(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    dz = _dz(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)
    return np.transpose(dz[0]) @ weight_hh


@ad.diffrule(lstm_outputs, "c0")
def _outputs_dc0(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    back = _backward((dy, ws, x, h0, c0, weight_ih, weight_hh, bias))
    return np.transpose(back[np.shape(x)[0], : np.shape(weight_hh)[1]])


@ad.diffrule(lstm_outputs, "weight_ih")
def _outputs_dw_ih(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    hidden, inputs = np.shape(weight_hh)[1], np.shape(weight_ih)[1]
    dw = _weight_grads(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)
    return dw[:, hidden : hidden + inputs]


@ad.diffrule(lstm_outputs, "weight_hh")
def _outputs_dw_hh(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    dw = _weight_grads(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)
    return dw[:, : np.shape(weight_hh)[1]]


@ad.diffrule(lstm_outputs, "bias")
def _outputs_dbias(dy, y, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
    return _weight_grads(dy, ws, x, h0, c0, weight_ih, weight_hh, bias)[:, -1]


# -- reference implementations (traced NumPy; what the higher-order rules differentiate) ---------
def _sigmoid_ref(z):
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _reference_steps(gx, h0, c0, weight_hh):
    """The recurrence from the input pre-activations ``gx (T, 4H, N)``: per step
    ``(h_prev, c, tanh(c), [i, f, g, o])`` (feature-major), then the last ``h``."""
    hidden = np.shape(weight_hh)[1]
    h, c = np.transpose(h0), np.transpose(c0)
    steps = []
    for t in range(np.shape(gx)[0]):
        z = gx[t] + weight_hh @ h
        i, f = _sigmoid_ref(z[:hidden]), _sigmoid_ref(z[hidden : 2 * hidden])
        g, o = np.tanh(z[2 * hidden : 3 * hidden]), _sigmoid_ref(z[3 * hidden :])
        c = f * c + i * g
        tc = np.tanh(c)
        steps.append((h, c, tc, np.concatenate([i, f, g, o], axis=0)))
        h = o * tc
    return steps, h


def _projection(x, weight_ih, bias):
    """``gx (T, 4H, N)``: the input part of every step's pre-activations."""
    gx = np.matmul(weight_ih, np.transpose(x, (0, 2, 1)))
    if bias is not None:
        gx = gx + np.reshape(bias, (-1, 1))
    return gx


def _reference_workspace(x, h0, c0, weight_ih, weight_hh, bias):
    """``lstm_layer`` written with traced NumPy calls (same layout, same values)."""
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    per_step, h_last = _reference_steps(_projection(x, weight_ih, bias), h0, c0, weight_hh)
    dtype = x.dtype
    ones = np.ones((1, n), dtype=dtype)
    blocks = [
        np.concatenate([h, np.transpose(x[t]), ones, c, tc, act], axis=0)
        for t, (h, c, tc, act) in enumerate(per_step)
    ]
    zeros_x, zeros_rest = np.zeros((inputs, n), dtype), np.zeros((6 * hidden, n), dtype)
    blocks.append(np.concatenate([h_last, zeros_x, ones, zeros_rest], axis=0))
    return np.stack(blocks)


def _outputs_from_gx(gx, h0, c0, weight_hh):
    per_step, h_last = _reference_steps(gx, h0, c0, weight_hh)
    hs = [h for h, *_ in per_step[1:]] + [h_last]
    return np.concatenate(
        [np.stack([np.transpose(h) for h in hs]), np.transpose(per_step[-1][1])[None]], axis=0
    )


def _reference_backward(dy, x, h0, c0, weight_ih, weight_hh, bias):
    """``lstm_layer_backward`` written with traced NumPy calls and ``ad.vjp``."""
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    gx = _projection(x, weight_ih, bias)
    _, back = ad.vjp(lambda gx, c0: _outputs_from_gx(gx, h0, c0, weight_hh), gx, c0)
    dz, d_c0 = back(dy)  # (T, 4H, N), (N, H)
    tail = np.concatenate([np.transpose(d_c0), np.zeros((3 * hidden, n), x.dtype)], axis=0)
    per_step, _ = _reference_steps(gx, h0, c0, weight_hh)
    ones = np.ones((1, n), dtype=x.dtype)
    operands = np.stack(
        [np.concatenate([h, np.transpose(x[t]), ones], axis=0) for t, (h, *_) in
         enumerate(per_step)]
    )  # fmt: skip
    dw = np.sum(np.matmul(dz, np.transpose(operands, (0, 2, 1))), axis=0)  # (4H, K)
    blocks = _blocks(k, n)
    padding = np.zeros(blocks * 4 * hidden * n - 4 * hidden * k, x.dtype)
    flat = np.concatenate([np.reshape(dw, (-1,)), padding])
    return np.concatenate([dz, tail[None], np.reshape(flat, (blocks, 4 * hidden, n))], axis=0)


@ad.diffrule(lstm_layer, "arrays")
def _lstm_layer_grads(dy, y, x, h0, c0, weight_ih, weight_hh, bias):
    """Used only when the workspace itself is differentiated (higher order)."""
    args = (x, h0, c0, weight_ih, weight_hh, bias)
    return list(ad.vjp(_reference_workspace, *args)[1](dy))


def _backward_rule(position):
    def rule(ct, out, dy, ws, x, h0, c0, weight_ih, weight_hh, bias=None):
        args = (dy, x, h0, c0, weight_ih, weight_hh, bias)
        return ad.vjp(_reference_backward, *args)[1](ct)[position]

    return rule


for _position, _name in enumerate(("dy", "x", "h0", "c0", "weight_ih", "weight_hh", "bias")):
    ad.diffrule(lstm_layer_backward, _name)(_backward_rule(_position))


def _cases() -> list[Case]:
    rng = np.random.default_rng(0)
    steps, n, inputs, hidden = 3, 2, 3, 2
    x = rng.normal(size=(steps, n, inputs))
    h0, c0 = rng.normal(size=(n, hidden)), rng.normal(size=(n, hidden))
    w_ih, w_hh = rng.normal(size=(4 * hidden, inputs)), rng.normal(size=(4 * hidden, hidden))
    b = rng.normal(size=4 * hidden)
    # the third derivative of the layer (second order of its backward) runs the reference
    # step by step under nested ad.vjp: keep that case small
    small = (rng.normal(size=(3, 2, 1)),  # dy: T=2, N=2, H=1, I=2
             rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 1)), rng.normal(size=(2, 1)),
             rng.normal(size=(4, 2)), rng.normal(size=(4, 1)), rng.normal(size=4))  # fmt: skip

    def outputs(x, h0, c0, w_ih, w_hh, b):
        return lstm_outputs(lstm_layer(x, h0, c0, w_ih, w_hh, b), x, h0, c0, w_ih, w_hh, b)

    def backward(dy, x, h0, c0, w_ih, w_hh, b):
        ws = lstm_layer(x, h0, c0, w_ih, w_hh, b)
        return lstm_layer_backward(dy, ws, x, h0, c0, w_ih, w_hh, b)

    return [
        Case(lstm_layer, lstm_layer, (x, h0, c0, w_ih, w_hh, b), "workspace"),
        Case(lstm_outputs, outputs, (x, h0, c0, w_ih, w_hh, b), "sequence"),
        Case(
            lstm_outputs,
            lambda x, w_ih, w_hh, h0=h0, c0=c0: outputs(x, h0, c0, w_ih, w_hh, None),
            (x, w_ih, w_hh),
            "no-bias-constant-state",
        ),  # fmt: skip
        Case(lstm_layer_backward, backward, small, "bptt"),
    ]


register_cases(_cases())
