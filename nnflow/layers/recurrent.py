"""Recurrent layers: ``RNNCell``, ``LSTMCell``, ``GRUCell``, the stateful ``Recur`` wrapper,
and the whole-sequence ``RNN``, ``LSTM``, ``GRU`` (batch first).

Names, shapes, gate orders and initialisation follow PyTorch (``weight_ih (G*H, I)``,
``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh``; LSTM gates i, f, g, o; GRU gates r, z, n;
everything ``U(-1/sqrt(H), 1/sqrt(H))``), so weights port across.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import init as initializers
from ..functional import relu, sigmoid
from .gru_ops import gru_layer, gru_outputs
from .linear import linear
from .model import Model, ShapeError, check_features, check_rank, describe
from .recurrence_ops import lstm_layer, lstm_outputs
from .rnn_ops import rnn_layer, rnn_outputs

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "Recur", "RNN", "LSTM", "GRU"]

_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


# -- one step of each cell, given the input projection gx = x W_ih^T + b_ih ----------------------
def rnn_step(gx, h, weight_hh, bias_hh, activation):
    """``h' = activation(gx + h W_hh^T + b_hh)``."""
    return activation(gx + linear(h, weight_hh, bias_hh))


def lstm_step(gx, h, c, weight_hh, bias_hh):
    """PyTorch's LSTM: gates i, f, g, o; ``c' = f c + i g``, ``h' = o tanh(c')``."""
    gates = gx + linear(h, weight_hh, bias_hh)
    n = gates.shape[-1] // 4
    s = sigmoid(gates)
    i, f, o = s[..., :n], s[..., n : 2 * n], s[..., 3 * n :]
    c = f * c + i * np.tanh(gates[..., 2 * n : 3 * n])
    return o * np.tanh(c), c


def gru_step(gx, h, weight_hh, bias_hh):
    """PyTorch's GRU: ``r, z = sigmoid(.)``, ``n = tanh(gx_n + r (h W_hn^T + b_hn))``,
    ``h' = (1 - z) n + z h``."""
    gh = linear(h, weight_hh, bias_hh)
    n = gh.shape[-1] // 3
    rz = sigmoid(gx[..., : 2 * n] + gh[..., : 2 * n])
    r, z = rz[..., :n], rz[..., n:]
    candidate = np.tanh(gx[..., 2 * n :] + r * gh[..., 2 * n :])
    return candidate + z * (h - candidate)


def _nonlinearity(nonlinearity: Any):
    if nonlinearity == "tanh":
        return np.tanh
    if nonlinearity == "relu":
        return relu
    if callable(nonlinearity):
        return nonlinearity
    raise ValueError(f"RNN: nonlinearity must be 'tanh', 'relu' or a function, got "
                     f"{nonlinearity!r}")  # fmt: skip


def _uniform_params(owner, suffix, gates, input_size, hidden_size, bias, rng, dtype):
    bound = 1.0 / math.sqrt(hidden_size)
    for name, shape in (("weight_ih", (gates * hidden_size, input_size)),
                        ("weight_hh", (gates * hidden_size, hidden_size)),
                        ("bias_ih", (gates * hidden_size,)),
                        ("bias_hh", (gates * hidden_size,))):  # fmt: skip
        value = initializers.uniform(shape, -bound, bound, rng, dtype)
        setattr(owner, name + suffix, value if bias or name.startswith("weight") else None)


def _check_sizes(name, input_size, hidden_size):
    if input_size <= 0 or hidden_size <= 0:
        raise ValueError(
            f"{name}: input_size and hidden_size must be positive, got {input_size} and "
            f"{hidden_size}"
        )


class _Cell(Model):
    kind = "RNN"

    def _build(self, input_size, hidden_size, bias, rng, dtype):
        _check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        rng = initializers.as_generator(rng)
        _uniform_params(self, "", _GATES[self.kind], input_size, hidden_size, bias, rng, dtype)

    def _zeros(self, x):
        return np.zeros_like(x, shape=np.shape(x)[:-1] + (self.hidden_size,))

    def _project(self, x):
        check_rank(self, x, (1, 2), "(N, input_size) or (input_size,)")
        check_features(self, x, self.input_size)
        return linear(x, self.weight_ih, self.bias_ih)

    def extra_repr(self) -> str:
        return f"{self.input_size} => {self.hidden_size}"


class RNNCell(_Cell):
    """Elman cell ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``; called as ``cell(x, h=None)``
    (zeros when ``h`` is ``None``), returns ``h'``. ``nonlinearity`` is ``"tanh"``, ``"relu"``
    or any function.

    >>> cell = RNNCell(3, 5, rng=0)
    >>> cell(np.ones((2, 3), np.float32)).shape
    (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: Any = "tanh", *, rng: Any = None,
                 dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, bias, rng, dtype)
        self.nonlinearity = _nonlinearity(nonlinearity)

    def forward(self, x: Any, h: Any = None) -> Any:
        gx = self._project(x)
        h = self._zeros(x) if h is None else h
        return rnn_step(gx, h, self.weight_hh, self.bias_hh, self.nonlinearity)


class LSTMCell(_Cell):
    """Long short-term memory cell, gates i, f, g, o: called as ``cell(x, (h, c)=None)``,
    returns ``(h', c')``.

    >>> h, c = LSTMCell(3, 5, rng=0)(np.ones((2, 3), np.float32))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """

    kind = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 rng: Any = None, dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, bias, rng, dtype)

    def forward(self, x: Any, state: Any = None) -> tuple[Any, Any]:
        gx = self._project(x)
        h, c = (self._zeros(x), self._zeros(x)) if state is None else state
        return lstm_step(gx, h, c, self.weight_hh, self.bias_hh)


class GRUCell(_Cell):
    """Gated recurrent unit, gates r, z, n: called as ``cell(x, h=None)``, returns ``h'``.

    >>> GRUCell(3, 5, rng=0)(np.ones((2, 3), np.float32)).shape
    (2, 5)
    """

    kind = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 rng: Any = None, dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, bias, rng, dtype)

    def forward(self, x: Any, h: Any = None) -> Any:
        gx = self._project(x)
        h = self._zeros(x) if h is None else h
        return gru_step(gx, h, self.weight_hh, self.bias_hh)


class Recur(Model):
    """Stateful wrapper (Flux's ``Recur``): each call runs ``cell(x, state)`` and keeps the new
    state for the next call; returns the cell's output (``h``, or ``h`` of ``(h, c)``).

    The state starts from ``state0`` (an array, or a tuple for LSTM; a trainable parameter) or
    zeros, and ``reset()`` returns to it. Gradients flow through the state produced within one
    differentiated call; a state carried in from an earlier call is a constant (truncated
    backpropagation through time). The carried state is a non-persistent buffer: never
    trained, not saved, and a plain array again once ``ad.grad`` returns. Pass the model to
    ``ad.grad`` as an argument (not through a closure) so its state is restored.

    >>> rnn = Recur(RNNCell(2, 3, rng=0))
    >>> y1 = rnn(np.ones((1, 2), np.float32)); y2 = rnn(np.ones((1, 2), np.float32))
    >>> bool((y1 != y2).any()), rnn.reset() is None and rnn.state is None
    (True, True)
    """

    def __init__(self, cell: Model, state0: Any = None):
        self.cell = cell
        self.state0 = state0
        self.register_buffer("state", None, persistent=False)

    def reset(self) -> None:
        """Forget the carried state: the next call starts from ``state0`` (or zeros)."""
        self.state = None

    def forward(self, x: Any) -> Any:
        state = self.state if self.state is not None else self.state0
        out = self.cell(x) if state is None else self.cell(x, state)
        self.state = out
        return out[0] if isinstance(out, tuple) else out

    def label(self) -> str:
        return f"Recur({self.cell.label()})"

    def _repr_lines(self, top: bool = False) -> list[str]:
        count = self.num_parameters()
        return [self.label() + (f"  # {count:,} parameters" if count else "")]


class _Sequence(Model):
    """Shared code of ``RNN``, ``LSTM``, ``GRU``: parameters ``weight_ih_l{k}`` etc."""

    kind = "RNN"

    def _build(self, input_size, hidden_size, num_layers, bias, batch_first, rng, dtype):
        name = type(self).__name__
        _check_sizes(name, input_size, hidden_size)
        if num_layers < 1:
            raise ValueError(f"{name}: num_layers must be >= 1, got {num_layers}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.batch_first = num_layers, batch_first
        rng = initializers.as_generator(rng)
        for k in range(num_layers):
            size = input_size if k == 0 else hidden_size
            _uniform_params(self, f"_l{k}", _GATES[self.kind], size, hidden_size, bias, rng, dtype)

    def _params(self, k):
        names = ("weight_ih", "bias_ih", "weight_hh", "bias_hh")
        return [getattr(self, f"{n}_l{k}") for n in names]

    def _inputs(self, x):
        check_rank(self, x, (3,), "(N, T, input_size)" if self.batch_first else "(T, N, I)")
        check_features(self, x, self.input_size)
        if np.shape(x)[1 if self.batch_first else 0] == 0:  # as PyTorch: no empty sequences
            raise ShapeError(self, f"expected at least one time step, got {describe(x)}")
        return x if self.batch_first else np.swapaxes(x, 0, 1)

    def _initial(self, x, state, count):
        """Per layer, a tuple of ``count`` state arrays ``(N, H)``."""
        if state is None:
            zeros = np.zeros_like(x, shape=(x.shape[0], self.hidden_size))
            return [(zeros,) * count] * self.num_layers
        parts = state if isinstance(state, tuple) else (state,)
        expected = (self.num_layers, x.shape[0], self.hidden_size)
        for p in parts:
            if tuple(np.shape(p)) != expected:
                raise _state_error(self, expected, p)
        return [tuple(p[k] for p in parts) for k in range(self.num_layers)]

    def _run(self, x, state, count, step):
        """Run every layer over the sequence; returns outputs ``(N, T, H)`` and final states."""
        x = self._inputs(x)
        states = self._initial(x, state, count)
        finals = []
        steps = None
        for k in range(self.num_layers):
            w_ih, b_ih, w_hh, b_hh = self._params(k)
            if steps is None:  # the first layer projects the whole sequence in one GEMM
                gx = linear(x, w_ih, b_ih)
                gxs = [gx[:, t] for t in range(x.shape[1])]
            else:
                gxs = [linear(h, w_ih, b_ih) for h in steps]
            s = states[k]
            steps = []
            for g in gxs:
                s = step(g, s, w_hh, b_hh)
                steps.append(s[0])
            finals.append(s)
        outputs = np.stack(steps, axis=1)
        if not self.batch_first:
            outputs = np.swapaxes(outputs, 0, 1)
        final = tuple(np.stack([f[i] for f in finals]) for i in range(count))
        return outputs, final

    def _fused(self, x, state, count, layer):
        """Run every layer through its fused primitives (the layer modules' ``*_ops``):
        ``layer(inputs (T, N, I), state, w_ih, b_ih, w_hh, b_hh)`` returns the layer's outputs
        ``(T, N, H)`` and its final ``count`` states; outputs ``(N, T, H)`` and final states."""
        x = self._inputs(x)
        states = self._initial(x, state, count)
        inputs, finals = np.swapaxes(x, 0, 1), []  # time first
        for k in range(self.num_layers):
            inputs, final = layer(inputs, states[k], *self._params(k))
            finals.append(final)
        outputs = np.swapaxes(inputs, 0, 1) if self.batch_first else inputs
        return outputs, tuple(np.stack([f[i] for f in finals]) for i in range(count))

    def extra_repr(self) -> str:
        text = f"{self.input_size} => {self.hidden_size}"
        return text + (f", num_layers={self.num_layers}" if self.num_layers > 1 else "")


def _state_error(layer, expected, got):
    return ShapeError(layer, f"expected initial state {expected}, got {describe(got)}")


class RNN(_Sequence):
    """Elman RNN over a whole sequence ``x (N, T, I)``: returns ``(outputs (N, T, H),
    h_n (num_layers, N, H))``; ``h0`` defaults to zeros.

    >>> out, h = RNN(3, 5, rng=0)(np.ones((2, 7, 3), np.float32))
    >>> out.shape, h.shape
    ((2, 7, 5), (1, 2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: Any = "tanh", bias: bool = True, batch_first: bool = True, *,
                 rng: Any = None, dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, num_layers, bias, batch_first, rng, dtype)
        self.nonlinearity = _nonlinearity(nonlinearity)

    def forward(self, x: Any, h0: Any = None) -> tuple[Any, Any]:
        act = self.nonlinearity
        fused = "tanh" if act is np.tanh else "relu" if act is relu else None
        if fused is None:  # a function of the user's: the step-by-step tape
            out, (h,) = self._run(x, h0, 1, lambda g, s, w, b: (rnn_step(g, s[0], w, b, act),))
            return out, h

        # tanh, relu: per layer two primitives (rnn_layer's workspace, rnn_outputs whose rules
        # are BPTT) instead of several tape operations per step: nnflow.layers.rnn_ops
        def layer(inputs, state, w_ih, b_ih, w_hh, b_hh):
            bias = None if b_ih is None else b_ih + b_hh  # both are added every step
            args = (inputs, state[0], w_ih, w_hh, bias, fused)
            out = rnn_outputs(rnn_layer(*args), *args)  # (T, N, H): h_1..h_T
            return out, (out[-1],)

        out, (h,) = self._fused(x, h0, 1, layer)
        return out, h


class LSTM(_Sequence):
    """LSTM over a whole sequence ``x (N, T, I)``: returns ``(outputs (N, T, H), (h_n, c_n))``
    with ``h_n, c_n`` of shape ``(num_layers, N, H)``; ``state=(h0, c0)`` defaults to zeros.

    >>> out, (h, c) = LSTM(3, 5, rng=0)(np.ones((2, 7, 3), np.float32))
    >>> out.shape, c.shape
    ((2, 7, 5), (1, 2, 5))
    """

    kind = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = True, *, rng: Any = None,
                 dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, num_layers, bias, batch_first, rng, dtype)

    def forward(self, x: Any, state: Any = None) -> tuple[Any, tuple[Any, Any]]:
        # per layer, the forward pass as one primitive (lstm_layer, its workspace) and the
        # outputs read from it (lstm_outputs, whose rules are BPTT): per-step recording would
        # cost ~15 tape operations per step (see recurrence_ops)
        def layer(inputs, state, w_ih, b_ih, w_hh, b_hh):
            bias = None if b_ih is None else b_ih + b_hh  # both are added every step
            args = (inputs, *state, w_ih, w_hh, bias)
            out = lstm_outputs(lstm_layer(*args), *args)  # (T + 1, N, H): h_1..h_T, c_T
            return out[:-1], (out[-2], out[-1])

        return self._fused(x, state, 2, layer)


class GRU(_Sequence):
    """GRU over a whole sequence ``x (N, T, I)``: returns ``(outputs (N, T, H), h_n)``.

    >>> out, h = GRU(3, 5, rng=0)(np.ones((2, 7, 3), np.float32))
    >>> out.shape, h.shape
    ((2, 7, 5), (1, 2, 5))
    """

    kind = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = True, *, rng: Any = None,
                 dtype: Any = np.float32):  # fmt: skip
        self._build(input_size, hidden_size, num_layers, bias, batch_first, rng, dtype)

    def forward(self, x: Any, h0: Any = None) -> tuple[Any, Any]:
        # per layer, two primitives (gru_layer's workspace, gru_outputs whose rules are BPTT)
        # instead of ~25 tape operations per step: nnflow.layers.gru_ops
        def layer(inputs, state, w_ih, b_ih, w_hh, b_hh):
            args = (inputs, state[0], w_ih, w_hh, b_ih, b_hh)
            out = gru_outputs(gru_layer(*args), *args)  # (T, N, H): h_1..h_T
            return out, (out[-1],)

        out, (h,) = self._fused(x, h0, 1, layer)
        return out, h
