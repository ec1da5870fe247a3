"""A whole GRU layer as three primitives, with backpropagation through time on raw arrays.

Recorded step by step, a GRU of ``T`` steps puts ~25 small operations per step on the tape, and
the per-operation cost of the interpreter, not the arithmetic, dominates: the compiled BPTT step
of a GRU (sequence 50, batch 32, 64 -> 128, float32) took 67 ms against PyTorch's 21. As
:mod:`nnflow.layers.recurrence_ops` does for the LSTM, a GRU layer is instead:

``ws = gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)``
    the forward pass on raw arrays into a feature-major *workspace* ``(T + 1, 10H + 1, N)``.
    Block ``t`` holds, in rows, ``[h_{t-1} (H); 1; gh (3H); r, z (2H); n (H); gx (3H)]``:
    ``gh = [W_hh | b_hh] [h_{t-1}; 1]`` is the step's one GEMM (its ``n`` rows are needed by
    the backward pass, ``n = tanh(gx_n + r gh_n)``), ``gx = W_ih x_t + b_ih`` comes from one
    batched GEMM over all steps before the loop; block ``T`` holds ``h_T`` (the rest unused).
    Each step is ~10 in-place ufunc calls on ``(H, N)`` blocks.
``out = gru_outputs(ws, x, h0, ...)``
    ``(T, N, H)``: ``h_1 .. h_T``, a contiguous copy. Its rules do BPTT (``ws`` is ``nodiff``)
    and give the *total* derivative of every other argument, reading the activations in ``ws``.
``back = gru_layer_backward(dy, ws, x, h0, ...)``
    the reverse loop: ``(T + 1, 3H, N)``, blocks ``t < T`` the cotangents of the steps'
    input pre-activations ``gx`` (gates r, z, n; those of ``gh`` equal them but for the ``n``
    rows, times ``r``), block ``T`` the cotangent of ``h0`` transposed (rows ``:H``). The rules
    of ``gru_outputs`` get ``dW_ih``, ``dW_hh``, the biases and ``dx`` from it with ordinary
    NumPy calls, so a compiled step drops what it does not need.

PyTorch's GRU (gates r, z, n): ``r, z = sigmoid(gx + gh)``, ``n = tanh(gx_n + r gh_n)``,
``h' = (1 - z) n + z h``. Higher order: the rules of ``gru_layer`` and ``gru_layer_backward``
differentiate reference implementations written with traced NumPy calls (slow, step by step;
used only when differentiating twice); the registry test checks all three to second order.

>>> x, h0 = np.zeros((3, 2, 5)), np.zeros((2, 4))  # T=3, N=2, input 5, hidden 4
>>> args = (x, h0, np.zeros((12, 5)), np.zeros((12, 4)), None, None)
>>> ws = gru_layer(*args)
>>> ws.shape, gru_outputs(ws, *args).shape
((4, 41, 2), (3, 2, 4))
"""

from __future__ import annotations

import numpy as np

from .. import ad
from ..ad.rules import Case, register_cases
from ..backend import get_array_module
from ..blas import gemm_address
from .gru_kernels import GRU_BACKWARD_STEPS, GRU_FORWARD_F32
from .recurrence_memo import once

__all__ = ["gru_layer", "gru_outputs", "gru_layer_backward"]


def _sizes(x, weight_hh):
    steps, n, inputs = np.shape(x)
    return steps, n, inputs, np.shape(weight_hh)[1]


def _rows(hidden):
    """Row offsets in a workspace block: h, 1, gh, (r, z), n, gx, and the block height."""
    gh = hidden + 1
    rz = gh + 3 * hidden
    n = rz + 2 * hidden
    gx = n + hidden
    return gh, rz, n, gx, gx + 3 * hidden


def _dtype(*arrays):
    return np.result_type(*(a for a in arrays if a is not None))


# -- the forward pass ----------------------------------------------------------------------------
@ad.primitive
def gru_layer(*arrays):
    """``gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)``: PyTorch's GRU over time.

    Args:
        x: ``(T, N, I)`` inputs, time first.
        h0: ``(N, H)`` initial state.
        weight_ih: ``(3H, I)``; weight_hh: ``(3H, H)``, gates r, z, n.
        bias_ih, bias_hh: ``(3H,)`` or ``None``.

    Returns:
        The workspace ``(T + 1, 10H + 1, N)`` described in the module docstring.
    """
    x, h0, weight_ih, weight_hh, bias_ih, bias_hh = arrays
    xp = get_array_module(x)
    steps, n, inputs, hidden = _sizes(x, weight_hh)
    dtype = _dtype(*arrays)
    gh, rz, nr, gx, rows = _rows(hidden)
    w = xp.empty((3 * hidden, hidden + 1), dtype=dtype)  # [W_hh | b_hh]
    w[:, :hidden] = weight_hh
    w[:, hidden] = 0 if bias_hh is None else bias_hh
    ws = xp.empty((steps + 1, rows, n), dtype=dtype)
    ws[0, :hidden] = xp.transpose(h0)
    ws[:, hidden] = 1
    ws[steps, hidden + 1 :] = 0
    xp.matmul(weight_ih, xp.transpose(x, (0, 2, 1)), out=ws[:steps, gx:])  # all steps' gx
    if bias_ih is not None:
        ws[:steps, gx:] += xp.reshape(bias_ih, (-1, 1)).astype(dtype, copy=False)
    loop = GRU_FORWARD_F32.get(ws) if dtype == np.float32 else None
    if loop is not None and (gemm := gemm_address(dtype)) is not None:
        loop(gemm, w, ws, hidden, dtype.type(0.5))  # every step, GEMMs included, one call
        return ws
    tmp = xp.empty((hidden, n), dtype=dtype)
    matmul, tanh, multiply, add, subtract = xp.matmul, xp.tanh, xp.multiply, xp.add, xp.subtract
    for t in range(steps):
        block = ws[t]
        h_prev, g_h, gates = block[:hidden], block[gh:rz], block[rz:nr]
        cand, g_x = block[nr:gx], block[gx:]
        matmul(w, block[:gh], out=g_h)
        add(g_x[: 2 * hidden], g_h[: 2 * hidden], gates)  # sigmoid(a) = (1 + tanh(a/2)) / 2
        multiply(gates, 0.5, gates)
        tanh(gates, gates)
        multiply(gates, 0.5, gates)
        add(gates, 0.5, gates)
        multiply(gates[:hidden], g_h[2 * hidden :], cand)  # n = tanh(gx_n + r gh_n)
        add(cand, g_x[2 * hidden :], cand)
        tanh(cand, cand)
        subtract(h_prev, cand, tmp)  # h' = n + z (h - n)
        multiply(gates[hidden:], tmp, tmp)
        add(cand, tmp, ws[t + 1, :hidden])
    return ws


@ad.primitive
def gru_outputs(ws, x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """The outputs ``(T, N, H)`` (``h_1 .. h_T``) of the GRU whose workspace ``ws`` is; the
    other arguments are those given to ``gru_layer`` (its rules need them)."""
    xp = get_array_module(ws)
    steps, n, inputs, hidden = _sizes(x, weight_hh)
    out = xp.empty((steps, n, hidden), dtype=ws.dtype)
    out[...] = xp.transpose(ws[1:, :hidden], (0, 2, 1))
    return out


# -- the backward pass ---------------------------------------------------------------------------
@ad.primitive
def gru_layer_backward(dy, ws, x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """Backpropagation through time: ``(T + 1, 3H, N)``, the cotangents of each step's input
    pre-activations ``gx`` (rows r, z, n), then that of ``h0`` transposed (block ``T``, rows
    ``:H``, the rest zeros). ``dy`` is the cotangent of ``gru_outputs`` ``(T, N, H)``."""
    xp = get_array_module(ws)
    steps, n, inputs, hidden = _sizes(x, weight_hh)
    dtype = ws.dtype
    gh, rz, nr, gx, _ = _rows(hidden)
    out = xp.zeros((steps + 1, 3 * hidden, n), dtype=dtype)
    dyh = xp.empty((steps, hidden, n), dtype=dtype)
    dyh[...] = xp.transpose(dy, (0, 2, 1))
    loop, gemm = GRU_BACKWARD_STEPS.get(dyh, ws, weight_hh), gemm_address(dtype)
    if loop is not None and gemm is not None:  # every step, GEMMs included, one call
        loop(gemm, dyh, ws, hidden, out, np.ascontiguousarray(weight_hh, dtype).T)
        return out
    carry = xp.zeros((hidden, n), dtype=dtype)  # d h_t from the later steps
    dh, a, b = (xp.empty((hidden, n), dtype=dtype) for _ in range(3))
    dgh = xp.empty((3 * hidden, n), dtype=dtype)
    w_t = xp.transpose(weight_hh).astype(dtype, copy=False)
    matmul, multiply, add, subtract = xp.matmul, xp.multiply, xp.add, xp.subtract
    for t in range(steps - 1, -1, -1):
        block, d = ws[t], out[t]
        h_prev, r, z = block[:hidden], block[rz : rz + hidden], block[rz + hidden : nr]
        cand, gh_n = block[nr:gx], block[gh + 2 * hidden : rz]
        d_r, d_z, d_n = d[:hidden], d[hidden : 2 * hidden], d[2 * hidden :]
        add(dyh[t], carry, dh)
        subtract(1, z, a)  # d n_pre = dh (1 - z) (1 - n^2)
        multiply(dh, a, d_n)
        multiply(cand, cand, a)
        subtract(1, a, a)
        multiply(d_n, a, d_n)
        subtract(h_prev, cand, a)  # d z_pre = dh (h - n) z (1 - z)
        multiply(dh, a, d_z)
        subtract(1, z, a)
        multiply(a, z, a)
        multiply(d_z, a, d_z)
        multiply(d_n, gh_n, d_r)  # d r_pre = d n_pre gh_n r (1 - r)
        subtract(1, r, b)
        multiply(b, r, b)
        multiply(d_r, b, d_r)
        dgh[: 2 * hidden] = d[: 2 * hidden]
        multiply(d_n, r, dgh[2 * hidden :])
        multiply(dh, z, carry)  # d h_{t-1} = dh z + W_hh^T dgh
        matmul(w_t, dgh, out=a)
        add(carry, a, carry)
    out[steps, :hidden] = carry
    return out


ad.nodiff(gru_outputs, "ws")
ad.nodiff(gru_layer_backward, "ws")


# -- the rules of gru_outputs: BPTT ----------------------------------------------------------------
def _backward(args):
    return once("gru-backward", gru_layer_backward, args)


def _dgx(args):
    """The input pre-activations' cotangents ``(T, 3H, N)``."""
    return _backward(args)[: np.shape(args[2])[0]]


def _dgh(args):
    """The hidden pre-activations' cotangents ``(T, 3H, N)``: ``dgx`` with its ``n`` rows
    times ``r`` (once per node for the two rules that use it)."""
    return once("gru-dgh", _hidden_cotangents, args)


def _hidden_cotangents(*args):
    ws, hidden = args[1], np.shape(args[5])[1]
    dgx = _dgx(args)
    steps = np.shape(dgx)[0]
    _, rz, _, _, _ = _rows(hidden)
    r = ws[:steps, rz : rz + hidden]
    return np.concatenate([dgx[:, : 2 * hidden], dgx[:, 2 * hidden :] * r], axis=1)


def _rule(name):
    def register(fn):
        def rule(dy, y, ws, x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
            return fn((dy, ws, x, h0, weight_ih, weight_hh, bias_ih, bias_hh))

        ad.diffrule(gru_outputs, name)(rule)
        return fn

    return register


@_rule("x")
def _outputs_dx(args):
    return np.transpose(np.matmul(np.transpose(args[4]), _dgx(args)), (0, 2, 1))


@_rule("h0")
def _outputs_dh0(args):
    back = _backward(args)
    return np.transpose(back[np.shape(args[2])[0], : np.shape(args[5])[1]])


@_rule("weight_ih")
def _outputs_dw_ih(args):
    return np.tensordot(_dgx(args), args[2], axes=([0, 2], [0, 1]))


@_rule("weight_hh")
def _outputs_dw_hh(args):
    hidden = np.shape(args[5])[1]
    steps = np.shape(args[2])[0]
    return np.tensordot(_dgh(args), args[1][:steps, :hidden], axes=([0, 2], [0, 2]))


@_rule("bias_ih")
def _outputs_db_ih(args):
    return np.sum(_dgx(args), axis=(0, 2))


@_rule("bias_hh")
def _outputs_db_hh(args):
    return np.sum(_dgh(args), axis=(0, 2))


# -- reference implementations (traced NumPy; what the higher-order rules differentiate) ---------
def _sigmoid_ref(a):
    return 0.5 * np.tanh(0.5 * a) + 0.5


def _projection(x, weight_ih, bias_ih):
    gx = np.matmul(weight_ih, np.transpose(x, (0, 2, 1)))  # (T, 3H, N)
    return gx if bias_ih is None else gx + np.reshape(bias_ih, (-1, 1))


def _reference_steps(gx, h0, weight_hh, bias_hh):
    """Per step ``(h_prev, gh, [r; z], n)`` (feature-major), then the last ``h``."""
    hidden = np.shape(weight_hh)[1]
    h = np.transpose(h0)
    steps = []
    for t in range(np.shape(gx)[0]):
        gh = weight_hh @ h
        if bias_hh is not None:
            gh = gh + np.reshape(bias_hh, (-1, 1))
        gates = _sigmoid_ref(gx[t, : 2 * hidden] + gh[: 2 * hidden])
        cand = np.tanh(gx[t, 2 * hidden :] + gates[:hidden] * gh[2 * hidden :])
        steps.append((h, gh, gates, cand))
        h = cand + gates[hidden:] * (h - cand)
    return steps, h


def _reference_workspace(x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """``gru_layer`` written with traced NumPy calls (same layout, same values)."""
    steps, n, inputs, hidden = _sizes(x, weight_hh)
    gx = _projection(x, weight_ih, bias_ih)
    per_step, h_last = _reference_steps(gx, h0, weight_hh, bias_hh)
    dtype = _dtype(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    ones = np.ones((1, n), dtype=dtype)
    blocks = [
        np.concatenate([h, ones, gh, gates, cand, gx[t]], axis=0)
        for t, (h, gh, gates, cand) in enumerate(per_step)
    ]
    blocks.append(np.concatenate([h_last, ones, np.zeros((9 * hidden, n), dtype)], axis=0))
    return np.stack(blocks)


def _outputs_from_gx(gx, h0, weight_hh, bias_hh):
    per_step, h_last = _reference_steps(gx, h0, weight_hh, bias_hh)
    hs = [h for h, *_ in per_step[1:]] + [h_last]
    return np.stack([np.transpose(h) for h in hs])


def _reference_backward(dy, x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """``gru_layer_backward`` written with traced NumPy calls and ``ad.vjp``."""
    steps, n, inputs, hidden = _sizes(x, weight_hh)
    gx = _projection(x, weight_ih, bias_ih)
    _, back = ad.vjp(lambda gx, h0: _outputs_from_gx(gx, h0, weight_hh, bias_hh), gx, h0)
    dgx, dh0 = back(dy)
    tail = np.concatenate([np.transpose(dh0), np.zeros((2 * hidden, n), x.dtype)], axis=0)
    return np.concatenate([dgx, tail[None]], axis=0)


@ad.diffrule(gru_layer, "arrays")
def _gru_layer_grads(dy, y, x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """Used only when the workspace itself is differentiated (higher order)."""
    args = (x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    return list(ad.vjp(_reference_workspace, *args)[1](dy))


def _backward_rule(position):
    def rule(ct, out, dy, ws, x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        args = (dy, x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
        return ad.vjp(_reference_backward, *args)[1](ct)[position]

    return rule


for _position, _name in enumerate(
    ("dy", "x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
):
    ad.diffrule(gru_layer_backward, _name)(_backward_rule(_position))


def _cases() -> list[Case]:
    rng = np.random.default_rng(1)
    steps, n, inputs, hidden = 3, 2, 3, 2
    x = rng.normal(size=(steps, n, inputs))
    h0 = rng.normal(size=(n, hidden))
    w_ih, w_hh = rng.normal(size=(3 * hidden, inputs)), rng.normal(size=(3 * hidden, hidden))
    b_ih, b_hh = rng.normal(size=3 * hidden), rng.normal(size=3 * hidden)
    small = (rng.normal(size=(2, 2, 1)),  # dy: T=2, N=2, H=1, I=2
             rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 1)), rng.normal(size=(3, 2)),
             rng.normal(size=(3, 1)), rng.normal(size=3), rng.normal(size=3))  # fmt: skip

    def outputs(x, h0, w_ih, w_hh, b_ih, b_hh):
        args = (x, h0, w_ih, w_hh, b_ih, b_hh)
        return gru_outputs(gru_layer(*args), *args)

    def backward(dy, x, h0, w_ih, w_hh, b_ih, b_hh):
        ws = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh)
        return gru_layer_backward(dy, ws, x, h0, w_ih, w_hh, b_ih, b_hh)

    return [
        Case(gru_layer, gru_layer, (x, h0, w_ih, w_hh, b_ih, b_hh), "workspace"),
        Case(gru_outputs, outputs, (x, h0, w_ih, w_hh, b_ih, b_hh), "sequence"),
        Case(
            gru_outputs,
            lambda x, w_ih, w_hh, h0=h0: outputs(x, h0, w_ih, w_hh, None, None),
            (x, w_ih, w_hh),
            "no-bias-constant-state",
        ),
        Case(gru_layer_backward, backward, small, "bptt"),
    ]


register_cases(_cases())
