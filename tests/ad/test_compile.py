"""ad.compile and ad.compile_grad against ad.trace/tape.play and eager ad.grad."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nnflow import ad
from nnflow.ad.rules import rule_cases

CASES = rule_cases()
RNG = np.random.default_rng(0)


def assert_same(got, want):
    """Equal structure, types, shapes, dtypes and values (NaNs equal)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif want is None or isinstance(want, (float, int)):
        assert type(got) is type(want) and (got == want or got != got and want != want)
    else:
        assert np.shape(got) == np.shape(want) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def perturbed(args, scale):
    return tuple(a * scale if isinstance(a, np.ndarray) else a for a in args)


# -- compile(tape) --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_compiled_tape_plays_like_the_tape(case):
    _, tape = ad.trace(case.call, *case.args)
    compiled = ad.compile(tape)
    for scale in (0.97, 1.0, 0.97):  # the second and third calls reuse the buffers
        args = perturbed(case.args, scale)
        try:
            want = tape.play(*args)
        except ad.GuardFailure:
            with pytest.raises(ad.GuardFailure):
                compiled.play(*args)
            continue
        assert_same(compiled.play(*args, copy=True), want)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_compile_grad_equals_grad(case):
    loss = _weighted(case)
    cg = ad.compile_grad(loss)
    for scale in (1.0, 0.97, 1.0):
        args = perturbed(case.args, scale)
        assert_same(cg(*args, copy=True), ad.grad(loss, *args))


def _weighted(case):
    weights = np.random.default_rng(7).uniform(0.5, 1.5, np.shape(case.call(*case.args)))
    return lambda *args: np.sum(case.call(*args) * weights)


def test_source_is_straight_line_python():
    W, b, x = RNG.normal(size=(3, 2)), RNG.normal(size=3), RNG.normal(size=(2, 5))
    cg = ad.compile_grad(lambda W, b, x: np.sum(np.exp(W @ x + b[:, None])), wrt=(0, 1))
    source = cg.source(W, b, x)
    assert source.startswith("def play(a0, a1, a2):")
    assert "for " not in source and source.count("exp(") == 1
    assert "matmul" in str(cg.tape(W, b, x))
    assert cg.traces == 0  # inspecting traced copies, cached nothing


# -- compile_grad: signatures, guards, cache --------------------------------------------------
def branchy(x):
    if np.sum(x) > 0:
        return np.sum(np.sin(x) * x)
    return np.sum(x**3)


def iterative(x, n):
    for _ in range(n):
        x = np.tanh(x) * 1.5
    return np.sum(x)


def test_data_dependent_branch_becomes_a_guard_and_both_variants_are_cached():
    cg = ad.compile_grad(branchy)
    xs = [RNG.normal(size=4) + 2, RNG.normal(size=4) - 2] * 3
    for x in xs:
        assert_same(cg(x, copy=True), ad.grad(branchy, x))
    assert cg.traces == 2


def test_iterative_loop_is_specialised_on_n():
    cg = ad.compile_grad(iterative)
    for n in (1, 3, 1, 3, 0):
        x = RNG.normal(size=3)
        assert_same(cg(x, n, copy=True), ad.grad(iterative, x, n))
    assert cg.traces == 3


def test_data_dependent_loop_retraces_when_the_trip_count_changes():
    def doubling(x):
        while np.max(x) < 10:
            x = x * 2.0
        return np.sum(x * x)

    cg = ad.compile_grad(doubling)
    for x in [np.ones(2), np.full(2, 3.0), np.full(2, 1.1), np.full(2, 3.5)] * 2:  # 4, 2 trips
        assert_same(cg(x, copy=True), ad.grad(doubling, x))
    assert cg.traces == 2


def test_retrace_warning_names_the_changed_part_of_the_key():
    cg = ad.compile_grad(iterative, warn_after=2)
    cg(np.ones(2), 1)
    cg(np.ones(2), 2)
    with pytest.warns(ad.RetraceWarning, match=r"n: int 2 -> int 3"):
        cg(np.ones(2), 3)
    with pytest.warns(ad.RetraceWarning, match=r"x: float64\[2\] -> float64\[5\]"):
        cg(np.ones(5), 3)


def test_retrace_warning_for_a_model_attribute_and_for_a_failed_guard():
    class Net:
        def __init__(self):
            self.w, self.scale = np.ones(3), 1.0

    def f(net, x):
        return np.sum(net.w * x) * net.scale

    cg = ad.compile_grad(f, warn_after=1)
    net = Net()
    cg(net, np.ones(3))
    net.scale = 2.0
    with pytest.warns(ad.RetraceWarning, match=r"net\.scale: float 1\.0 -> float 2\.0"):
        assert cg(net, np.ones(3))[0] == 6.0
    cg2 = ad.compile_grad(branchy, warn_after=1)
    cg2(np.ones(2))
    with pytest.warns(ad.RetraceWarning, match="data-dependent branch"):
        cg2(-np.ones(2))


def test_cache_is_bounded():
    cg = ad.compile_grad(iterative, cache_size=2, warn_after=100)
    for n in range(5):
        cg(np.ones(2), n)
    assert len(cg._cache) == 2
    cg(np.ones(2), 0)  # evicted: traced again, still right
    assert cg.traces == 6


def test_returned_gradients_are_buffers_unless_copied():
    f = lambda x: np.sum(np.sin(x) * x)  # noqa: E731
    cg = ad.compile_grad(f)
    cg(np.ones(3))
    _, g1 = cg(np.ones(3))
    kept = g1[0].copy()
    _, g2 = cg(np.full(3, 2.0))
    assert g1[0] is g2[0] and not np.array_equal(g1[0], kept)  # overwritten, as documented
    _, c1 = cg(np.ones(3), copy=True)
    cg(np.full(3, 2.0))
    np.testing.assert_array_equal(c1[0], kept)


def test_constant_gradients_cannot_be_changed_through_a_result():
    cg = ad.compile_grad(lambda x: np.sum(x * 3.0))
    cg(np.ones(2))
    _, g = cg(np.ones(2))
    g[0][...] = 0  # e.g. in-place clipping by the caller
    assert cg(np.ones(2))[1][0].tolist() == [3.0, 3.0]


def test_a_returned_buffer_passed_back_as_input():
    f = lambda x: np.sum(np.sin(x) * np.exp(-x * x) * x)  # noqa: E731
    cg = ad.compile_grad(f)
    x = np.linspace(-1, 1, 4)
    g = cg(x)[1][0]
    for _ in range(3):
        want = ad.grad(f, g)
        got = cg(g, copy=True)
        assert_same(got, want)
        g = cg(g)[1][0]


def test_floats_kwargs_wrt_and_trees():
    def f(params, x, s, *, scale, bias):
        return np.sum(np.tanh(params["w"] @ x + bias) * params["v"][0]) * s * scale

    params = {"w": RNG.normal(size=(2, 3)), "v": [RNG.normal(size=2)]}
    cg = ad.compile_grad(f, wrt=(0, 2))
    for s in (0.5, 2.0):
        x = RNG.normal(size=3)
        kw = {"scale": 3, "bias": RNG.normal(size=2)}
        want = ad.grad(f, params, x, s, wrt=(0, 2), **kw)
        got = cg(params, x, s, copy=True, **kw)
        assert_same(got, want)
        assert isinstance(got[1][2], float) and got[1][1] is None
    assert cg.traces == 1


def test_compiled_step_composes_with_outer_differentiation():
    cg = ad.compile_grad(lambda x: np.sum(x**3))
    d2 = ad.grad(lambda x: np.sum(cg(x)[1][0]), np.array([1.0, 2.0]))[1][0]
    np.testing.assert_allclose(d2, [6.0, 12.0])


def test_compile_grad_matches_second_order():
    f = lambda x: np.sum(np.sin(x) ** 2)  # noqa: E731
    g = ad.gradient(f)
    cg = ad.compile_grad(lambda x: np.sum(g(x) * np.cos(x)))
    for x in (RNG.normal(size=3), RNG.normal(size=3)):
        assert_same(cg(x, copy=True), ad.grad(lambda x: np.sum(g(x) * np.cos(x)), x))


# -- state written back ------------------------------------------------------------------------
class TinyRNN:
    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.W, self.U = rng.normal(size=(4, 3)) * 0.5, rng.normal(size=(4, 4)) * 0.5
        self.h = np.zeros(4)

    def __call__(self, x):
        self.h = np.tanh(self.W @ x + self.U @ self.h)
        return self.h


class TinyBatchNorm:
    __nnflow_buffers__ = ("running_mean", "running_var")

    def __init__(self, n):
        self.weight, self.bias = np.ones(n), np.zeros(n)
        self.running_mean, self.running_var = np.zeros(n), np.ones(n)

    def __call__(self, x):
        mean, var = np.mean(x, axis=0), np.var(x, axis=0)
        self.running_mean = 0.9 * self.running_mean + 0.1 * mean
        self.running_var = 0.9 * self.running_var + 0.1 * var
        return (x - mean) / np.sqrt(var + 1e-5) * self.weight + self.bias


@pytest.mark.parametrize("make", [lambda: TinyRNN(1), lambda: TinyBatchNorm(3)])
def test_state_is_written_back_on_every_call(make):
    eager_model, compiled_model = make(), make()

    def loss(model, x):
        return np.sum(model(x) ** 2)

    cg = ad.compile_grad(loss)
    for step in range(4):
        x = np.random.default_rng(step).normal(
            size=(3,) if isinstance(eager_model, TinyRNN) else (5, 3)
        )
        want = ad.grad(loss, eager_model, x)
        assert_same(cg(compiled_model, x, copy=True), want)
        for name, value in vars(eager_model).items():
            assert_same(getattr(compiled_model, name), value)
    assert cg.traces == 1


def _layer_models():
    """Small models from nnflow.layers: (make, input shape), or a skip reason."""
    layers = pytest.importorskip("nnflow.layers")
    try:
        return [
            (lambda: layers.Chain(layers.Linear(4, 6, rng=0), layers.BatchNorm1d(6),
                                  layers.Dropout(0.5, rng=1), layers.Linear(6, 1, rng=2)),
             (8, 4)),
            (lambda: layers.Recur(layers.RNNCell(3, 5, rng=0)), (2, 3)),
            (lambda: layers.Chain(layers.Conv2d(1, 2, 3, rng=0), layers.MaxPool2d(2),
                                  layers.Flatten(), layers.Linear(18, 1, rng=1)),
             (2, 1, 8, 8)),
            (lambda: layers.LSTM(3, 4, rng=0), (2, 5, 3)),
        ]  # fmt: skip
    except (AttributeError, TypeError) as error:  # layers still changing: not this test's subject
        pytest.skip(f"nnflow.layers API differs: {error}")


def _output(y):
    return y[0] if isinstance(y, tuple) else y


def test_layer_models_with_state_and_dropout_match_eager():
    def loss(model, x):
        return np.mean(_output(model(x)) ** 2)

    for make, shape in _layer_models():
        eager_model, compiled_model = make(), make()
        cg = ad.compile_grad(loss)
        for step in range(3):
            x = np.random.default_rng(step).normal(size=shape).astype(np.float32)
            assert_same(cg(compiled_model, x, copy=True), ad.grad(loss, eager_model, x))
        assert cg.traces <= 2  # a Recur's state starts as None, then is an array


def test_random_state_during_tracing_warns():
    cg = ad.compile_grad(lambda x: np.sum(x * np.random.normal(size=3)))
    with pytest.warns(RuntimeWarning, match="global random state"):
        cg(np.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cg(np.ones(3))  # no retrace, no warning


def test_compiled_tape_reads_trees_and_writes_state_like_tape_play():
    def f(model, x):
        model.h = np.tanh(model.layers[0]["W"] @ x + model.h)
        return np.sum(model.h**2)

    def make():
        model = TinyRNN(2)
        model.layers = [{"W": model.W}]
        model.h = np.zeros(4)
        return model

    _, tape = ad.trace(f, make(), np.ones(3))
    compiled = ad.compile(tape)
    played, compiled_model = make(), make()
    for step in range(3):
        x = np.full(3, step / 3)
        assert compiled.play(compiled_model, x) == tape.play(played, x)
        np.testing.assert_array_equal(compiled_model.h, played.h)
