"""Initialisers: shapes, dtypes, bounds and statistics, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnflow import init


def test_fans_and_gain():
    assert init.fans((20, 10)) == (10, 20)
    assert init.fans((8, 4, 3, 3)) == (36, 72)
    assert init.calculate_gain("tanh") == 5 / 3
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans((3,))
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("cube")


@pytest.mark.parametrize(
    "make, std",
    [
        (lambda: init.xavier_uniform((200, 300), rng=0), math.sqrt(2 / 500)),
        (lambda: init.glorot_normal((200, 300), rng=0), math.sqrt(2 / 500)),
        (lambda: init.kaiming_uniform((200, 300), nonlinearity="relu", rng=0), math.sqrt(2 / 300)),
        (lambda: init.he_normal((200, 300), nonlinearity="relu", rng=0), math.sqrt(2 / 300)),
        (
            lambda: init.kaiming_normal((200, 300), mode="fan_out", nonlinearity="relu", rng=0),
            math.sqrt(2 / 200),
        ),
        (lambda: init.normal((200, 300), 0.0, 0.02, rng=0), 0.02),
        (lambda: init.uniform((200, 300), -1, 1, rng=0), 1 / math.sqrt(3)),
    ],
)
def test_initialiser_statistics(make, std):
    w = make()
    assert w.dtype == np.float32 and w.shape == (200, 300)
    assert abs(w.std() - std) < 0.03 * std and abs(w.mean()) < 0.05 * std + 1e-3


def test_uniform_bounds_constants_and_dtype():
    w = init.kaiming_uniform((64, 32), a=math.sqrt(5), rng=0, dtype=np.float64)
    assert w.dtype == np.float64 and np.abs(w).max() <= 1 / math.sqrt(32)
    assert (init.zeros((2, 3)) == 0).all() and (init.ones(4) == 1).all()
    assert init.constant(2, 0.5).tolist() == [0.5, 0.5]


def test_orthogonal_rows_and_columns():
    tall = init.orthogonal((6, 3), gain=2.0, rng=0).astype(np.float64)
    np.testing.assert_allclose(tall.T @ tall, 4 * np.eye(3), atol=1e-5)
    wide = init.orthogonal((3, 2, 4), rng=0).astype(np.float64).reshape(3, 8)
    np.testing.assert_allclose(wide @ wide.T, np.eye(3), atol=1e-5)


def test_seeding():
    np.testing.assert_array_equal(init.normal(5, rng=1), init.normal(5, rng=1))
    g = np.random.default_rng(0)
    assert init.as_generator(g) is g
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform((3, 3), mode="fan")
