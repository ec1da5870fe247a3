"""Layers through ``ad.compile_grad``: state written back and noise redrawn as in eager mode."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rand

from nnflow import ad, losses
from nnflow.layers import (
    LSTM,
    BatchNorm,
    Chain,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    LSTMCell,
    MaxPool2d,
    Recur,
)

if not hasattr(ad, "compile_grad"):
    pytest.skip("ad.compile_grad is not available", allow_module_level=True)

F64 = {"dtype": np.float64}


def twins(make):
    return make(), make()


def assert_same(g1, g2):
    assert set(g1) == set(g2)
    for path in g2:
        np.testing.assert_allclose(g1[path], g2[path], rtol=1e-12, atol=1e-14, err_msg=str(path))


def test_batchnorm_dropout_state_and_noise_match_eager_over_calls():
    def make():
        return Chain(Linear(4, 8, rng=0, **F64), BatchNorm(8, **F64), Dropout(0.3, rng=1),
                     Linear(8, 2, rng=2, **F64))  # fmt: skip

    compiled_model, eager_model = twins(make)
    x, y = rand(16, 4), np.arange(16) % 2

    def loss(m, x, y):
        return losses.cross_entropy(m(x), y)

    step = ad.compile_grad(loss, wrt=(0,))
    masks = set()
    for _ in range(3):
        v1, g1 = step(compiled_model, x, y, copy=True)
        v2, g2 = ad.grad(loss, eager_model, x, y, wrt=(0,))
        assert float(v1) == pytest.approx(float(v2), rel=1e-12)
        assert_same(g1[0], g2[0])
        bn1, bn2 = compiled_model.layers[1], eager_model.layers[1]
        np.testing.assert_allclose(bn1.running_var, bn2.running_var, rtol=1e-12)
        assert type(bn1.running_mean) is np.ndarray
        masks.add(float(v1))
    assert len(masks) == 3  # a new dropout mask (and new statistics) on every call


def test_recur_state_is_written_back_by_the_compiled_step():
    r1, r2 = twins(lambda: Recur(LSTMCell(3, 4, rng=0, **F64)))
    xs = [rand(2, 3, seed=s) for s in range(3)]

    def loss(r, xs):
        return sum(np.sum(r(x) ** 2) for x in xs)

    step = ad.compile_grad(loss, wrt=(0,))
    for _ in range(3):
        v1, g1 = step(r1, xs, copy=True)
        v2, g2 = ad.grad(loss, r2, xs, wrt=(0,))
        assert float(v1) == pytest.approx(float(v2), rel=1e-12)
        assert_same(g1[0], g2[0])
        assert type(r1.state[0]) is np.ndarray
        np.testing.assert_allclose(r1.state[1], r2.state[1], rtol=1e-12)


@pytest.mark.parametrize("name", ["conv", "lstm"])
def test_benchmark_models_compile(name):
    if name == "conv":
        model = Chain(Conv2d(1, 2, 3, activation="relu", rng=0, **F64), MaxPool2d(2), Flatten(),
                      Linear(2 * 3 * 3, 3, rng=1, **F64))  # fmt: skip
        x, target = rand(4, 1, 8, 8), np.array([0, 1, 2, 1])

        def loss(m, x, t):
            return losses.cross_entropy(m(x), t)
    else:
        model = LSTM(3, 4, num_layers=2, rng=0, **F64)
        x, target = rand(2, 5, 3), rand(2, 5, 4, seed=1)

        def loss(m, x, t):
            return losses.mse(m(x)[0], t)

    step = ad.compile_grad(loss, wrt=(0,))
    for _ in range(2):
        v1, g1 = step(model, x, target, copy=True)
    v2, g2 = ad.grad(loss, model, x, target, wrt=(0,))
    assert float(v1) == pytest.approx(float(v2), rel=1e-12)
    assert_same(g1[0], g2[0])


def test_linear_and_relu_write_into_planned_buffers_and_stay_exact():
    """A compiled MLP step hands ``linear`` an ``out=`` buffer and lets ``relu`` overwrite its
    input; values and gradients must equal eager ones on every call (buffers are reused, so a
    second call with other data catches a stale or aliased buffer), and the step must allocate
    less than the activations it no longer allocates."""
    import tracemalloc

    from nnflow.functional import relu
    from nnflow.layers.linear import linear

    model = Chain(
        Linear(64, 128, activation="relu", rng=0, **F64),
        Linear(128, 32, activation="relu", rng=1, **F64),
        Linear(32, 10, rng=2, **F64),
    )

    def loss(m, x, y):
        return losses.cross_entropy(m(x), y)

    compiled = ad.compile_grad(loss, wrt=(0,))
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((256, 64)), rng.integers(0, 10, 256)) for _ in range(3)]
    source = compiled.source(model, *batches[0])
    assert "linear(a1, v1, v2, out=B" in source, source
    assert " in place" in source.split("relu(", 1)[1].split("\n", 1)[0], source
    for x, y in batches:
        value, grads = compiled(model, x, y)
        want_value, want = ad.grad(loss, model, x, y, wrt=(0,))
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        assert_same(grads[0], want[0])
    tracemalloc.start()
    try:
        compiled(model, *batches[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    activations = 256 * (128 + 32) * 8 * 2  # the linear outputs and relu results, float64
    assert peak < activations, peak

    # the keyword itself, outside a tape: the same numbers as without it
    x, w, b = rng.standard_normal((4, 5, 3)), rng.standard_normal((2, 3)), np.ones(2)
    out = np.empty((4, 5, 2))
    assert linear(x, w, b, out=out) is out
    np.testing.assert_allclose(out, x @ w.T + b, rtol=1e-13)
    out2 = np.empty((5, 2))
    assert linear(x[0], w, None, out=out2) is out2
    np.testing.assert_allclose(out2, x[0] @ w.T, rtol=1e-13)
    z = np.array([-1.0, 0.0, 2.0])
    assert relu(z, z) is z and z.tolist() == [0.0, 0.0, 2.0]
