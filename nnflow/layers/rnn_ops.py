"""A whole Elman RNN layer (``tanh`` or ``relu``) as three primitives, with BPTT on raw arrays.

As for the LSTM (:mod:`nnflow.layers.recurrence_ops`) and the GRU
(:mod:`nnflow.layers.gru_ops`): recorded step by step, a sequence puts several small
operations per step on the tape, and the interpreter's cost per operation dominates (the
compiled BPTT step of ``RNN(64, 128)`` over 50 steps, batch 32: 13 ms against PyTorch's 6.5).
Here a layer is:

``ws = rnn_layer(x, h0, weight_ih, weight_hh, bias, nonlinearity)``
    the forward pass into a feature-major workspace ``(T + 1, K, N)``, ``K = H + I + 1``:
    block ``t`` holds ``[h_{t-1}; x_t; 1]``, the operand of the step's one GEMM with
    ``[W_hh | W_ih | b]`` (``b = b_ih + b_hh``), whose result, through the nonlinearity, is
    ``h_t``: the first ``H`` rows of block ``t + 1``. Block ``T`` holds ``h_T``, zeros, 1.
``out = rnn_outputs(ws, x, h0, ...)``
    ``(T, N, H)``: ``h_1 .. h_T``. Its rules do BPTT (``ws`` is ``nodiff``).
``back = rnn_layer_backward(dy, ws, x, h0, ...)``
    ``(T + 1, H, N)``: the cotangents of the steps' pre-activations, then that of ``h0``
    transposed. The rules read the weight gradient ``back[:T] [h_{t-1}; x_t; 1]^T`` (one
    ``tensordot``), ``dx`` and ``dh0`` from it with ordinary NumPy calls.

``nonlinearity`` is ``"tanh"`` or ``"relu"``; its derivative comes from ``h_t`` itself (``1 -
h^2``, ``h > 0``). ``RNN`` layers with another function step through their cells instead.

>>> x, h0 = np.zeros((3, 2, 5)), np.zeros((2, 4))  # T=3, N=2, input 5, hidden 4
>>> args = (x, h0, np.zeros((4, 5)), np.zeros((4, 4)), None, "tanh")
>>> ws = rnn_layer(*args)
>>> ws.shape, rnn_outputs(ws, *args).shape
((4, 10, 2), (3, 2, 4))
"""

from __future__ import annotations

import numpy as np

from .. import ad
from ..ad.rules import Case, register_cases
from ..backend import get_array_module
from .recurrence_memo import once

__all__ = ["rnn_layer", "rnn_outputs", "rnn_layer_backward", "NONLINEARITIES"]

NONLINEARITIES = ("tanh", "relu")


def _sizes(x, weight_hh):
    steps, n, inputs = np.shape(x)
    hidden = np.shape(weight_hh)[1]
    return steps, n, inputs, hidden, hidden + inputs + 1


def _check(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"rnn_layer: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


# -- the forward pass ----------------------------------------------------------------------------
@ad.primitive
def rnn_layer(x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
    """The Elman RNN over time: ``h_t = act(W_ih x_t + W_hh h_{t-1} + b)``.

    Args:
        x: ``(T, N, I)`` inputs, time first; h0: ``(N, H)``.
        weight_ih: ``(H, I)``; weight_hh: ``(H, H)``; bias: ``(H,)`` (``b_ih + b_hh``) or
            ``None``; nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        The workspace ``(T + 1, H + I + 1, N)`` described in the module docstring.
    """
    _check(nonlinearity)
    xp = get_array_module(x)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    dtype = np.result_type(*(a for a in (x, h0, weight_ih, weight_hh, bias) if a is not None))
    w = xp.empty((hidden, k), dtype=dtype)  # [W_hh | W_ih | b]
    w[:, :hidden] = weight_hh
    w[:, hidden : k - 1] = weight_ih
    w[:, k - 1] = 0 if bias is None else bias
    ws = xp.empty((steps + 1, k, n), dtype=dtype)
    ws[0, :hidden] = xp.transpose(h0)
    ws[:steps, hidden : k - 1] = xp.transpose(x, (0, 2, 1))
    ws[steps, hidden : k - 1] = 0
    ws[:, k - 1] = 1
    for t in range(steps):
        h = ws[t + 1, :hidden]
        xp.matmul(w, ws[t], out=h)
        if nonlinearity == "tanh":
            xp.tanh(h, h)
        else:
            xp.maximum(h, 0, out=h)
    return ws


@ad.primitive
def rnn_outputs(ws, x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
    """The outputs ``(T, N, H)`` (``h_1 .. h_T``) of the RNN whose workspace ``ws`` is; the
    other arguments are those given to ``rnn_layer`` (its rules need them)."""
    xp = get_array_module(ws)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    out = xp.empty((steps, n, hidden), dtype=ws.dtype)
    out[...] = xp.transpose(ws[1:, :hidden], (0, 2, 1))
    return out


# -- the backward pass ---------------------------------------------------------------------------
@ad.primitive
def rnn_layer_backward(dy, ws, x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
    """Backpropagation through time: ``(T + 1, H, N)``, the cotangents of each step's
    pre-activation, then that of ``h0`` transposed. ``dy``: the cotangent of ``rnn_outputs``
    ``(T, N, H)``."""
    _check(nonlinearity)
    xp = get_array_module(ws)
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    dtype = ws.dtype
    out = xp.empty((steps + 1, hidden, n), dtype=dtype)
    dyh = xp.empty((steps, hidden, n), dtype=dtype)
    dyh[...] = xp.transpose(dy, (0, 2, 1))
    carry = xp.zeros((hidden, n), dtype=dtype)
    slope = xp.empty((hidden, n), dtype=dtype)
    w_t = xp.transpose(weight_hh).astype(dtype, copy=False)
    for t in range(steps - 1, -1, -1):
        h, d = ws[t + 1, :hidden], out[t]
        xp.add(dyh[t], carry, d)
        if nonlinearity == "tanh":  # 1 - h^2
            xp.multiply(h, h, slope)
            xp.subtract(1, slope, slope)
            xp.multiply(d, slope, d)
        else:  # h > 0
            xp.multiply(d, h > 0, d)
        xp.matmul(w_t, d, out=carry)
    out[steps] = carry
    return out


ad.nodiff(rnn_outputs, "ws")
ad.nodiff(rnn_layer_backward, "ws")


# -- the rules of rnn_outputs: BPTT ----------------------------------------------------------------
def _rule(name):
    def register(fn):
        def rule(dy, y, ws, x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
            args = (dy, ws, x, h0, weight_ih, weight_hh, bias, nonlinearity)
            return fn(once("rnn-backward", rnn_layer_backward, args), args)

        ad.diffrule(rnn_outputs, name)(rule)
        return fn

    return register


def _weights(back, args):
    """``[dW_hh | dW_ih | db]`` ``(H, K)``: the pre-activations' cotangents times the steps'
    operands ``[h_{t-1}; x_t; 1]``, read from the workspace (once per node for the two weight
    rules)."""
    return once("rnn-weights", lambda *args: _weight_product(back, args), args)


def _weight_product(back, args):
    steps = np.shape(args[2])[0]
    return np.tensordot(back[:steps], args[1][:steps], axes=([0, 2], [0, 2]))


@_rule("x")
def _outputs_dx(back, args):
    steps = np.shape(args[2])[0]
    return np.transpose(np.matmul(np.transpose(args[4]), back[:steps]), (0, 2, 1))


@_rule("h0")
def _outputs_dh0(back, args):
    return np.transpose(back[np.shape(args[2])[0]])


@_rule("weight_ih")
def _outputs_dw_ih(back, args):
    hidden, inputs = np.shape(args[5])[1], np.shape(args[4])[1]
    return _weights(back, args)[:, hidden : hidden + inputs]


@_rule("weight_hh")
def _outputs_dw_hh(back, args):
    return _weights(back, args)[:, : np.shape(args[5])[1]]


@_rule("bias")
def _outputs_dbias(back, args):
    return np.sum(back[: np.shape(args[2])[0]], axis=(0, 2))


# -- reference implementations (traced NumPy; what the higher-order rules differentiate) ---------
def _activation(nonlinearity):
    return np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))


def _projection(x, weight_ih, bias):
    gx = np.matmul(weight_ih, np.transpose(x, (0, 2, 1)))  # (T, H, N)
    return gx if bias is None else gx + np.reshape(bias, (-1, 1))


def _reference_states(gx, h0, weight_hh, nonlinearity):
    """``[h_0, h_1, .., h_T]`` feature-major ``(H, N)`` each."""
    act = _activation(nonlinearity)
    hs = [np.transpose(h0)]
    for t in range(np.shape(gx)[0]):
        hs.append(act(gx[t] + weight_hh @ hs[-1]))
    return hs


def _reference_workspace(x, h0, weight_ih, weight_hh, bias, nonlinearity):
    """``rnn_layer`` written with traced NumPy calls (same layout, same values)."""
    steps, n, inputs, hidden, k = _sizes(x, weight_hh)
    hs = _reference_states(_projection(x, weight_ih, bias), h0, weight_hh, nonlinearity)
    dtype = np.result_type(*(a for a in (x, h0, weight_ih, weight_hh, bias) if a is not None))
    ones = np.ones((1, n), dtype=dtype)
    blocks = [np.concatenate([hs[t], np.transpose(x[t]), ones], axis=0) for t in range(steps)]
    blocks.append(np.concatenate([hs[steps], np.zeros((inputs, n), dtype), ones], axis=0))
    return np.stack(blocks)


def _reference_backward(dy, x, h0, weight_ih, weight_hh, bias, nonlinearity):
    """``rnn_layer_backward`` written with traced NumPy calls and ``ad.vjp``."""
    gx = _projection(x, weight_ih, bias)

    def outputs(gx, h0):
        hs = _reference_states(gx, h0, weight_hh, nonlinearity)
        return np.stack([np.transpose(h) for h in hs[1:]])

    dgx, dh0 = ad.vjp(outputs, gx, h0)[1](dy)
    return np.concatenate([dgx, np.transpose(dh0)[None]], axis=0)


def _layer_rule(position):
    def rule(dy, y, x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
        """Used only when the workspace itself is differentiated (higher order)."""
        args = (x, h0, weight_ih, weight_hh, bias)
        reference = lambda *a: _reference_workspace(*a, nonlinearity)  # noqa: E731
        return ad.vjp(reference, *args)[1](dy)[position]

    return rule


for _position, _name in enumerate(("x", "h0", "weight_ih", "weight_hh", "bias")):
    ad.diffrule(rnn_layer, _name)(_layer_rule(_position))


def _backward_rule(position):
    def rule(ct, out, dy, ws, x, h0, weight_ih, weight_hh, bias=None, nonlinearity="tanh"):
        args = (dy, x, h0, weight_ih, weight_hh, bias)
        reference = lambda *a: _reference_backward(*a, nonlinearity)  # noqa: E731
        return ad.vjp(reference, *args)[1](ct)[position]

    return rule


for _position, _name in enumerate(("dy", "x", "h0", "weight_ih", "weight_hh", "bias")):
    ad.diffrule(rnn_layer_backward, _name)(_backward_rule(_position))


def _cases() -> list[Case]:
    rng = np.random.default_rng(2)
    steps, n, inputs, hidden = 3, 2, 3, 2
    x = rng.normal(size=(steps, n, inputs))
    h0 = rng.normal(size=(n, hidden))
    w_ih, w_hh = rng.normal(size=(hidden, inputs)), rng.normal(size=(hidden, hidden))
    b = rng.normal(size=hidden)
    small = (rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2)),
             rng.normal(size=(2, 2)), rng.normal(size=(2, 2)), rng.normal(size=2))  # fmt: skip

    def outputs(nonlinearity):
        def call(x, h0, w_ih, w_hh, b):
            args = (x, h0, w_ih, w_hh, b, nonlinearity)
            return rnn_outputs(rnn_layer(*args), *args)

        return call

    def backward(dy, x, h0, w_ih, w_hh, b):
        ws = rnn_layer(x, h0, w_ih, w_hh, b, "tanh")
        return rnn_layer_backward(dy, ws, x, h0, w_ih, w_hh, b, "tanh")

    return [
        Case(rnn_layer, lambda *a: rnn_layer(*a, "tanh"), (x, h0, w_ih, w_hh, b), "workspace"),
        Case(rnn_outputs, outputs("tanh"), (x, h0, w_ih, w_hh, b), "tanh"),
        Case(rnn_outputs, outputs("relu"), (x, h0, w_ih, w_hh, b), "relu"),
        Case(rnn_layer_backward, backward, small, "bptt"),
    ]


register_cases(_cases())
