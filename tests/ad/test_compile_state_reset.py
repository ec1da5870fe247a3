"""Regression: a compiled step whose traced call *created* a tuple state (``Recur`` after
``reset()``: ``state`` was ``None``, the LSTM cell assigned ``(h, c)``) is replayed with the
state ``None`` again. The write-back used to index into ``None`` (``TypeError: attribute name
must be string, not 'int'``), so the Trainer fell back to eager ``ad.grad`` from the second
epoch of ``examples/rnn.py`` on."""

from __future__ import annotations

import numpy as np

from nnflow import ad
from nnflow.layers import GRUCell, LSTMCell, Model, Recur


class Stateful(Model):
    def __init__(self, cell):
        self.rnn = Recur(cell)

    def forward(self, x):
        return self.rnn(x) + self.rnn(x)  # two steps: state carried within the call too


def loss(model, x):
    return np.sum(model(x) ** 2)


def test_replaying_a_step_traced_from_a_reset_state_rebuilds_the_tuple():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    compiled, eager = Stateful(LSTMCell(4, 5, rng=0)), Stateful(LSTMCell(4, 5, rng=0))
    cg = ad.compile_grad(loss, wrt=(0,))
    for _ in range(2):  # state None (traced), then (h, c) (traced), then None (replayed)
        for model in (compiled, eager):
            model.rnn.reset()
        for _ in range(2):
            value, grads = cg(compiled, x)
            expected, expected_grads = ad.grad(loss, eager, x, wrt=(0,))
            np.testing.assert_allclose(value, expected, rtol=1e-5)
            for path, g in expected_grads[0].items():
                np.testing.assert_allclose(grads[0][path], g, rtol=1e-4, atol=1e-6)
            assert type(compiled.rnn.state) is tuple and len(compiled.rnn.state) == 2
            for mine, theirs in zip(compiled.rnn.state, eager.rnn.state, strict=True):
                np.testing.assert_allclose(mine, theirs, rtol=1e-5)
    assert cg.traces == 2


def test_a_single_array_state_is_unaffected():
    x = np.ones((2, 3), np.float32)
    model = Stateful(GRUCell(3, 4, rng=0))
    cg = ad.compile_grad(loss, wrt=(0,))
    cg(model, x)
    model.rnn.reset()
    value, _ = cg(model, x)
    model.rnn.reset()
    expected, _ = ad.grad(loss, model, x, wrt=(0,))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
