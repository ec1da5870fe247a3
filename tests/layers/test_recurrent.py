"""Recurrent cells, Recur (with the survey's case), and the sequence layers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_model_grads, rand

from nnflow import ad
from nnflow.layers import GRU, LSTM, RNN, GRUCell, LSTMCell, Model, Recur, RNNCell, ShapeError


def sig(x):
    return 1 / (1 + np.exp(-x))


# -- plain NumPy references, gate orders as PyTorch documents them -------------------------------
def ref_rnn(cell, x, h):
    return np.tanh(x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh)


def ref_lstm(cell, x, h, c, suffix=""):
    p = {n: getattr(cell, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    z = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(c), c


def ref_gru(cell, x, h, suffix=""):
    p = {n: getattr(cell, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    gi = x @ p["weight_ih"].T + p["bias_ih"]
    gh = h @ p["weight_hh"].T + p["bias_hh"]
    (ir, iz, inn), (hr, hz, hn) = np.split(gi, 3, -1), np.split(gh, 3, -1)
    r, z = sig(ir + hr), sig(iz + hz)
    n = np.tanh(inn + r * hn)
    return (1 - z) * n + z * h


F64 = {"rng": 0, "dtype": np.float64}


def test_rnn_cell_forward_gradcheck_relu_and_shapes():
    cell = RNNCell(3, 4, **F64)
    assert cell.weight_ih.shape == (4, 3) and cell.weight_hh.shape == (4, 4)
    x, h = rand(2, 3), rand(2, 4, seed=1)
    np.testing.assert_allclose(cell(x, h), ref_rnn(cell, x, h), rtol=1e-12)
    np.testing.assert_allclose(cell(x), ref_rnn(cell, x, np.zeros((2, 4))), rtol=1e-12)
    check_model_grads(cell, x, h)
    relu_cell = RNNCell(3, 4, nonlinearity="relu", **F64)
    pre = x @ relu_cell.weight_ih.T + relu_cell.bias_ih + relu_cell.bias_hh
    np.testing.assert_allclose(relu_cell(x), np.maximum(pre, 0), rtol=1e-12)
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(3, 4, nonlinearity="cube")


def test_lstm_cell_forward_gradcheck():
    cell = LSTMCell(3, 4, **F64)
    assert cell.weight_ih.shape == (16, 3) and cell.bias_hh.shape == (16,)
    x, h, c = rand(2, 3), rand(2, 4, seed=1), rand(2, 4, seed=2)
    for got, want in zip(cell(x, (h, c)), ref_lstm(cell, x, h, c), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)

    def loss(m, x, h, c):
        h1, c1 = m(x, (h, c))
        return np.sum(h1 * np.arange(4.0)) + np.sum(c1**2)

    ad.gradcheck(loss, cell, x, h, c)


def test_gru_cell_forward_gradcheck():
    cell = GRUCell(3, 4, **F64)
    assert cell.weight_hh.shape == (12, 4)
    x, h = rand(2, 3), rand(2, 4, seed=1)
    np.testing.assert_allclose(cell(x, h), ref_gru(cell, x, h), rtol=1e-12)
    check_model_grads(cell, x, h)


def test_cells_float32_no_bias_and_errors():
    cell = LSTMCell(3, 4, bias=False, rng=0)
    assert cell.bias_ih is None and cell.num_parameters() == 16 * 3 + 16 * 4
    h, c = cell(rand(2, 3, dtype=np.float32))
    assert h.dtype == np.float32 and c.dtype == np.float32
    with pytest.raises(ShapeError, match=r"LSTMCell\(3 => 4\) expected input \(\.\.\., 3\)"):
        cell(rand(2, 5, dtype=np.float32))
    with pytest.raises(ValueError, match="must be positive"):
        GRUCell(0, 3)


# -- Recur: the survey's case ---------------------------------------------------------------------
class ScalarCell(Model):
    """h' = Wi x + Wh h + b, identity activation, scalars."""

    def __init__(self):
        self.Wi, self.Wh, self.b = np.array(5.0), np.array(4.0), np.array(0.0)

    def forward(self, x, h):
        return self.Wi * x + self.Wh * h + self.b


def second_output(model, xs):
    outputs = [model(x) for x in xs]
    return outputs[1]


def test_survey_recur_case_with_reset_before_each_call():
    model = Recur(ScalarCell(), state0=np.array(7.0))
    for _ in range(2):
        model.reset()
        val, g = ad.grad(second_output, model, [2.0, 3.0])
        assert float(val) == 167.0
        grads = {k: float(v) for k, v in g[0].items()}
        assert grads == {("cell", "Wi"): 11.0, ("cell", "Wh"): 66.0, ("cell", "b"): 5.0,
                         ("state0",): 16.0}  # fmt: skip
        assert not isinstance(model.state, ad.Tracer) and float(model.state) == 167.0


def test_survey_recur_case_second_call_without_reset_is_truncated_bptt():
    model = Recur(ScalarCell(), state0=np.array(7.0))
    ad.grad(second_output, model, [2.0, 3.0])
    val, g = ad.grad(second_output, model, [2.0, 3.0])
    # h0 = 167 carried in as a constant: h1 = 10 + 4*167 = 678, h2 = 15 + 4*678 = 2727
    assert float(val) == 2727.0
    grads = {k: float(v) for k, v in g[0].items()}
    # dWh = h1 + Wh * h0 = 678 + 668; nothing flows into state0 or the old state
    assert grads == {("cell", "Wi"): 11.0, ("cell", "Wh"): 1346.0, ("cell", "b"): 5.0,
                     ("state0",): 0.0}  # fmt: skip
    assert ("state",) not in g[0]
    assert float(model.state) == 2727.0


def test_survey_case_with_rnncell_identity():
    cell = RNNCell(1, 1, nonlinearity=lambda h: h, dtype=np.float64)
    cell.weight_ih, cell.weight_hh = np.array([[5.0]]), np.array([[4.0]])
    cell.bias_ih, cell.bias_hh = np.zeros(1), np.zeros(1)
    model = Recur(cell, state0=np.array([7.0]))
    xs = [np.array([[2.0]]), np.array([[3.0]])]
    val, g = ad.grad(lambda m, xs: np.sum(second_output(m, xs)), model, xs)
    assert float(val) == 167.0
    assert float(g[0][("cell", "weight_ih")][0, 0]) == 11.0
    assert float(g[0][("cell", "weight_hh")][0, 0]) == 66.0
    assert float(g[0][("cell", "bias_hh")][0]) == 5.0
    assert float(g[0][("state0",)][0]) == 16.0


def test_recur_lstm_state_reset_and_matches_manual_stepping():
    cell = LSTMCell(2, 3, **F64)
    model = Recur(cell)
    xs = [rand(4, 2, seed=s) for s in range(3)]
    outs = [model(x) for x in xs]
    state = None
    for x, out in zip(xs, outs, strict=True):
        state = cell(x, state)
        np.testing.assert_allclose(out, state[0])
    assert isinstance(model.state, tuple)
    model.reset()
    np.testing.assert_allclose(model(xs[0]), outs[0])
    assert [p for p, _ in model.named_buffers()] == []  # the carried state is not saved
    assert "Recur(LSTMCell(2 => 3))" in repr(model)

    def loss(m, xs):
        m.reset()
        return sum(np.sum(m(x) ** 2) for x in xs)

    ad.gradcheck(loss, model, xs)
    assert type(model.state[0]) is np.ndarray


# -- sequence layers ------------------------------------------------------------------------------
def test_lstm_sequence_matches_reference_two_layers():
    lstm = LSTM(3, 4, num_layers=2, **F64)
    assert [p for p, _ in lstm.parameters()][:4] == [("weight_ih_l0",), ("weight_hh_l0",),
                                                    ("bias_ih_l0",), ("bias_hh_l0",)]  # fmt: skip
    x = rand(2, 5, 3)
    out, (h, c) = lstm(x)
    inputs = x
    finals = []
    for k in range(2):
        hk, ck = np.zeros((2, 4)), np.zeros((2, 4))
        outs = []
        for t in range(5):
            hk, ck = ref_lstm(lstm, inputs[:, t], hk, ck, f"_l{k}")
            outs.append(hk)
        inputs = np.stack(outs, 1)
        finals.append((hk, ck))
    np.testing.assert_allclose(out, inputs, rtol=1e-12)
    np.testing.assert_allclose(h, np.stack([f[0] for f in finals]), rtol=1e-12)
    np.testing.assert_allclose(c, np.stack([f[1] for f in finals]), rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [RNN, LSTM, GRU])
def test_sequence_layers_gradcheck_with_initial_state(layer_cls):
    layer = layer_cls(2, 3, **F64)
    x = rand(2, 4, 2)
    count = 2 if layer_cls is LSTM else 1
    state = tuple(rand(1, 2, 3, seed=5 + i) for i in range(count))
    state = state if count == 2 else state[0]

    def loss(m, x, state):
        out, final = m(x, state)
        final = final if isinstance(final, tuple) else (final,)
        return np.sum(out * np.arange(3.0)) + sum(np.sum(f**2) for f in final)

    ad.gradcheck(loss, layer, x, state)


def test_gru_and_rnn_sequences_match_cells():
    for layer, ref in ((GRU(3, 4, **F64), ref_gru), (RNN(3, 4, **F64), None)):
        x = rand(2, 3, 3)
        out, h = layer(x)
        hk = np.zeros((2, 4))
        for t in range(3):
            if ref is None:
                pre = (x[:, t] @ layer.weight_ih_l0.T + layer.bias_ih_l0
                       + hk @ layer.weight_hh_l0.T + layer.bias_hh_l0)  # fmt: skip
                hk = np.tanh(pre)
            else:
                hk = ref(layer, x[:, t], hk, "_l0")
            np.testing.assert_allclose(out[:, t], hk, rtol=1e-12)
        np.testing.assert_allclose(h[0], hk, rtol=1e-12)


def test_sequence_time_first_float32_and_errors():
    lstm = LSTM(3, 4, batch_first=False, rng=0)
    out, (h, c) = lstm(rand(5, 2, 3, dtype=np.float32))
    assert out.shape == (5, 2, 4) and h.shape == (1, 2, 4) and out.dtype == np.float32
    with pytest.raises(ShapeError, match=r"expected a 3-d input"):
        LSTM(3, 4)(rand(2, 3))
    with pytest.raises(ShapeError, match=r"expected initial state \(1, 2, 4\)"):
        GRU(3, 4)(rand(2, 5, 3, dtype=np.float32), rand(2, 4, dtype=np.float32))
    with pytest.raises(ValueError, match="num_layers"):
        RNN(3, 4, num_layers=0)
    for layer in (LSTM(3, 4), GRU(3, 4), RNN(3, 4), LSTM(3, 4, batch_first=False)):
        with pytest.raises(ShapeError, match=r"expected at least one time step, got float32\["):
            layer(np.zeros((2, 0, 3) if layer.batch_first else (0, 2, 3), np.float32))


# -- the fused LSTM primitives (recurrence_ops) ---------------------------------------------------
def _lstm_args(steps, n, inputs, hidden, bias=True, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = [(steps, n, inputs), (n, hidden), (n, hidden), (4 * hidden, inputs),
              (4 * hidden, hidden)] + ([(4 * hidden,)] if bias else [])  # fmt: skip
    args = [rng.normal(size=s).astype(dtype) for s in shapes]
    return tuple(args) + ((None,) if not bias else ())


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_primitives_match_their_traced_references(bias):
    """The raw-array forward and BPTT loops equal the traced reference implementations that
    their higher-order rules differentiate (workspace layout included)."""
    from nnflow.layers import recurrence_ops as ops

    args = _lstm_args(4, 3, 2, 5, bias=bias)
    ws = ops.lstm_layer(*args)
    np.testing.assert_allclose(ws, ops._reference_workspace(*args), rtol=1e-13, atol=1e-14)
    dy = np.random.default_rng(1).normal(size=(5, 3, 5))
    expected = ops._reference_backward(dy, *args)
    np.testing.assert_allclose(ops.lstm_layer_backward(dy, ws, *args), expected, rtol=1e-12)


def test_lstm_layer_gradients_time_first_no_bias_two_layers_and_final_cell():
    """Every gradient path of the fused layer: inputs, initial h and c, both layers'
    weights, c_n in the loss, no bias, time-first, eager and compiled alike."""
    lstm = LSTM(2, 3, num_layers=2, bias=False, batch_first=False, **F64)
    x = rand(4, 2, 2)
    state = (rand(2, 2, 3, seed=3), rand(2, 2, 3, seed=4))

    def loss(m, x, state):
        out, (h, c) = m(x, state)
        return np.sum(out * np.arange(3.0)) + np.sum(h**2) + np.sum(np.sin(c))

    ad.gradcheck(loss, lstm, x, state)
    value, grads = ad.grad(loss, lstm, x, state)
    compiled = ad.compile_grad(loss)
    for _ in range(2):  # the second call replays the compiled step
        value_c, grads_c = compiled(lstm, x, state)
        np.testing.assert_allclose(value_c, value, rtol=1e-12)
        for path, g in grads[0].items():
            np.testing.assert_allclose(grads_c[0][path], g, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads_c[1], grads[1], rtol=1e-10, atol=1e-12)


def test_lstm_layer_second_order_and_float32_agrees_with_float64():
    lstm = LSTM(2, 3, **F64)
    x = rand(2, 3, 2)

    def grad_norm(x):  # a gradient w.r.t. the input, differentiated again
        g = ad.grad(lambda x: np.sum(np.tanh(lstm(x)[0])), x)[1][0]
        return np.sum(g**2)

    ad.gradcheck(grad_norm, x)
    lstm32 = LSTM(2, 3, rng=0, dtype=np.float32)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        setattr(lstm32, name, getattr(lstm, name).astype(np.float32))

    def loss(m, x):
        return np.sum(m(x)[0] ** 2)

    _, g64 = ad.grad(loss, lstm, x)
    _, g32 = ad.grad(loss, lstm32, x.astype(np.float32))
    for path, g in g64[0].items():
        assert g32[0][path].dtype == np.float32
        np.testing.assert_allclose(g32[0][path], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_eager_backward_runs_once_per_node_and_frees_its_memo(monkeypatch, kind):
    """``ad.grad`` asks one rule per parameter; the BPTT loop, and a product two rules share
    (the GRU's hidden cotangents, the RNN's weight product), must run once for all of them,
    and nothing they computed may outlive the call (the memo dies with the workspace)."""
    import gc

    from nnflow.layers import gru_ops, recurrence_memo, recurrence_ops, rnn_ops

    module, names, layer = {
        "LSTM": (recurrence_ops, ("lstm_layer_backward",), LSTM),
        "GRU": (gru_ops, ("gru_layer_backward", "_hidden_cotangents"), GRU),
        "RNN": (rnn_ops, ("rnn_layer_backward", "_weight_product"), RNN),
    }[kind]
    calls = []
    for name in names:
        original = getattr(module, name)

        def counting(*args, original=original, name=name):
            calls.append(name)
            return original(*args)

        monkeypatch.setattr(module, name, counting)
    m = layer(3, 4, rng=np.random.default_rng(0))
    x = rand(2, 5, 3, seed=1)

    def loss(m):
        out, _ = m(x)
        return np.sum(out**2)

    _, grads = ad.grad(loss, m)
    assert sorted(calls) == sorted(names)  # weight_ih, weight_hh, bias_ih, bias_hh share them
    names = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert {path[0] for path in grads[0]} >= names
    del grads
    gc.collect()
    assert recurrence_memo._MEMO == {}


def test_gru_without_bias_time_first_and_stacked_gradcheck():
    """The fused GRU primitives (nnflow.layers.gru_ops) with no biases, time first, two
    layers: gradients of inputs, state and every parameter by finite differences."""
    layer = GRU(2, 3, num_layers=2, bias=False, batch_first=False, **F64)
    assert layer.bias_ih_l0 is None and layer.bias_hh_l1 is None
    x, h0 = rand(4, 2, 2), rand(2, 2, 3, seed=7)

    def loss(m, x, h0):
        out, h = m(x, h0)
        return np.sum(out * np.arange(3.0)) + np.sum(np.sin(h))

    ad.gradcheck(loss, layer, x, h0)


def test_gru_compiled_matches_eager_and_float32_matches_float64():
    layer = GRU(3, 5, **F64)
    x = rand(4, 6, 3, seed=2)
    target = rand(4, 6, 5, seed=3)

    def loss(m, x, target):
        return np.mean((m(x)[0] - target) ** 2)

    value, grads = ad.grad(loss, layer, x, target)
    step = ad.compile_grad(loss, wrt=(0,))
    step(layer, x, target)
    value_c, grads_c = step(layer, x, target)
    np.testing.assert_allclose(value_c, value, rtol=1e-12)
    for path, g in grads[0].items():
        np.testing.assert_allclose(grads_c[0][path], g, rtol=1e-10, atol=1e-14)
    layer32 = GRU(3, 5, rng=0, dtype=np.float32)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        setattr(layer32, name, getattr(layer, name).astype(np.float32))
    value32, grads32 = ad.grad(loss, layer32, x.astype(np.float32), target.astype(np.float32))
    assert np.asarray(value32).dtype == np.float32
    np.testing.assert_allclose(value32, value, rtol=1e-5)
    for path, g in grads[0].items():
        assert grads32[0][path].dtype == np.float32
        np.testing.assert_allclose(grads32[0][path], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_rnn_sequence_fused_matches_a_numpy_loop_and_gradchecks(nonlinearity):
    """``RNN`` with tanh or relu runs the fused primitives (nnflow.layers.rnn_ops): outputs
    against a plain NumPy loop, two layers time first, gradients by finite differences."""
    layer = RNN(3, 4, num_layers=2, nonlinearity=nonlinearity, batch_first=False, **F64)
    x, h0 = rand(5, 2, 3, seed=3), rand(2, 2, 4, seed=4)
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    out, h = layer(x, h0)
    inputs = x
    for k in range(2):
        w_ih, b_ih, w_hh, b_hh = layer._params(k)
        hk, steps = h0[k], []
        for t in range(5):
            hk = act(inputs[t] @ w_ih.T + b_ih + hk @ w_hh.T + b_hh)
            steps.append(hk)
        inputs = np.stack(steps)
        np.testing.assert_allclose(h[k], hk, rtol=1e-12)
    np.testing.assert_allclose(out, inputs, rtol=1e-12)

    def loss(m, x, h0):
        out, h = m(x, h0)
        return np.sum(out * np.arange(4.0)) + np.sum(h**2)

    ad.gradcheck(loss, layer, x, h0)


def test_rnn_with_a_function_of_its_own_steps_through_cells_and_agrees():
    """A nonlinearity that is neither tanh nor relu takes the step-by-step path; given tanh
    as a function of the user's, it matches the fused tanh layer, gradients included."""
    fused = RNN(3, 4, **F64)
    custom = RNN(3, 4, nonlinearity=lambda a: np.tanh(a), **F64)
    x = rand(2, 5, 3, seed=6)

    def loss(m, x):
        return np.sum(m(x)[0] ** 2)

    value, grads = ad.grad(loss, fused, x)
    value_c, grads_c = ad.grad(loss, custom, x)
    np.testing.assert_allclose(value_c, value, rtol=1e-12)
    for path, g in grads[0].items():
        np.testing.assert_allclose(grads_c[0][path], g, rtol=1e-10, atol=1e-14)
    step = ad.compile_grad(loss, wrt=(0,))
    step(fused, x)
    for path, g in step(fused, x)[1][0].items():
        np.testing.assert_allclose(g, grads[0][path], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("layer_cls", [RNN, LSTM, GRU])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(layer_cls):
    """Batch 0 (no sequences, 5 steps): outputs (0, 5, H) and every parameter's gradient zero,
    of its shape, eager and compiled (the LSTM's backward has no blocks to hold it then)."""
    layer = layer_cls(3, 4, rng=0)
    x = np.zeros((0, 5, 3), np.float32)

    def loss(m, x):
        return np.sum(m(x)[0])

    assert layer(x)[0].shape == (0, 5, 4)
    step = ad.compile_grad(loss, wrt=(0,))
    step(layer, x)
    for value, grads in (ad.grad(loss, layer, x), step(layer, x)):
        assert float(value) == 0.0
        for path, g in grads[0].items():
            assert g.shape == getattr(layer, path[0]).shape and not np.any(g), path
