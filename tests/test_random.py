"""nnflow.random: plain draws outside tracing, fresh draws on every replay and compiled call."""

from __future__ import annotations

import numpy as np
import pytest

import nnflow.random as nr
from nnflow import ad


def test_draws_outside_tracing():
    rng = nr.default_rng(0)
    x = nr.normal(rng, (3, 4))
    assert x.shape == (3, 4) and x.dtype == np.float32
    u = nr.uniform(rng, 1000, low=2.0, high=3.0, dtype=np.float64)
    assert u.dtype == np.float64 and 2.0 <= u.min() and u.max() < 3.0
    m = nr.bernoulli(rng, 0.25, (2000,))
    assert set(np.unique(m).tolist()) <= {0.0, 1.0} and 0.15 < m.mean() < 0.35
    assert sorted(nr.permutation(rng, 5).tolist()) == [0, 1, 2, 3, 4]
    assert nr.normal(rng, 2, dtype=np.float16).dtype == np.float16
    assert nr.normal(rng, 2, like=np.ones(1)).shape == (2,)
    with pytest.raises(ValueError, match="p must be in"):
        nr.bernoulli(rng, 1.5, 2)
    with pytest.raises(TypeError, match="floating-point"):
        nr.normal(rng, 2, dtype=np.int32)


def test_same_seed_same_draws():
    a, b = nr.default_rng(5), nr.default_rng(5)
    np.testing.assert_array_equal(nr.normal(a, 4), nr.normal(b, 4))
    np.testing.assert_array_equal(nr.permutation(a, 9), nr.permutation(b, 9))


def noisy(x, rng):
    keep = nr.bernoulli(rng, 0.5, x.shape, dtype=x.dtype, like=x)
    eps = nr.normal(rng, x.shape, dtype=x.dtype)
    return np.sum((x * keep + eps) ** 2)


def test_a_draw_is_a_tape_operation_redrawn_on_replay():
    rng = nr.default_rng(0)
    _, tape = ad.trace(noisy, np.ones(8), rng)
    assert "draw_bernoulli" in str(tape) and "draw_normal" in str(tape)
    first, second = tape.play(np.ones(8), rng), tape.play(np.ones(8), rng)
    assert first != second
    compiled = ad.compile(tape)
    assert compiled.play(np.ones(8), rng) != compiled.play(np.ones(8), rng)


def test_grad_of_grad_records_draws_on_both_tapes():
    rng = nr.default_rng(0)
    _, tape = ad.trace(lambda x: ad.grad(noisy, x, rng)[1][0], np.ones(4))
    assert str(tape).count("draw_") == 2
    assert not np.array_equal(tape.play(np.ones(4)), tape.play(np.ones(4)))


def test_compiled_calls_draw_fresh_noise_and_seeded_runs_repeat_exactly():
    cg = ad.compile_grad(noisy, wrt=(0,))
    x = np.linspace(-1, 1, 6)
    eager_rng, compiled_rng = nr.default_rng(3), nr.default_rng(3)
    results = []
    for _ in range(4):
        want = ad.grad(noisy, x, eager_rng, wrt=(0,))
        got = cg(x, compiled_rng, copy=True)
        assert want[0] == got[0]
        np.testing.assert_array_equal(want[1][0], got[1][0])
        results.append(got[0])
    assert len(set(results)) == 4  # fresh noise on every call
    assert cg.traces == 1


def test_generator_held_by_a_model_is_read_on_every_call():
    class Noisy:
        def __init__(self, seed):
            self.w, self.rng = np.ones(5), nr.default_rng(seed)

    def loss(model):
        return np.sum(model.w * nr.normal(model.rng, 5, dtype=np.float64))

    cg = ad.compile_grad(loss)
    model = Noisy(1)
    first = [cg(model)[0] for _ in range(3)]
    model.rng = nr.default_rng(1)  # re-seeding by replacing the generator
    again = [cg(model)[0] for _ in range(3)]
    assert first == again and cg.traces == 1
    other = Noisy(1)  # a new object with the same structure reuses the compiled step
    assert [cg(other)[0] for _ in range(3)] == first and cg.traces == 1


def test_failed_guards_do_not_consume_draws():
    def branchy(x, rng):
        eps = nr.normal(rng, x.shape, dtype=x.dtype)
        if np.sum(x) > 0:
            return np.sum(x * eps)
        return np.sum(x * x * eps)

    cg = ad.compile_grad(branchy, wrt=(0,))
    eager_rng, compiled_rng = nr.default_rng(9), nr.default_rng(9)
    for x in [np.ones(3), -np.ones(3)] * 3:
        want = ad.grad(branchy, x, eager_rng, wrt=(0,))
        got = cg(x, compiled_rng, copy=True)
        assert want[0] == got[0]
    assert cg.traces == 2
