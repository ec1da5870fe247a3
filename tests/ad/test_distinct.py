"""Gradients never share memory with one another (nnflow.ad.distinct), eager or compiled.

``add``'s rule hands the same cotangent to both operands; before this, ``ad.grad`` returned one
array for both, and an in-place change of one (``clip_grad_norm``) changed the other: the
LSTM's two bias gradients were scaled by ``coef**2``.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nnflow import ad
from nnflow.ad import distinct
from nnflow.layers import LSTM
from nnflow.optim import clip_grad_norm


def _both(f, *args, wrt=None):
    """``(eager gradients, compiled gradients)`` of ``f`` at ``args``."""
    eager = ad.grad(f, *args, wrt=wrt)[1]
    compiled = ad.compile_grad(f, wrt=wrt)
    compiled(*args)  # trace
    return eager, compiled(*args)[1]


@pytest.mark.parametrize("mode", [0, 1], ids=["eager", "compiled"])
def test_operands_of_an_add_get_their_own_arrays(mode):
    a, b = np.arange(3.0), np.ones(3)
    g = _both(lambda x, y: np.sum((x + y) * np.array([1.0, 2.0, 3.0])), a, b)[mode]
    assert g[0] is not g[1] and not np.shares_memory(g[0], g[1])
    np.testing.assert_array_equal(g[0], [1.0, 2.0, 3.0])
    first = g[0]
    first *= 10  # in place: the other is untouched
    np.testing.assert_array_equal(g[1], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("mode", [0, 1], ids=["eager", "compiled"])
def test_clip_grad_norm_scales_each_lstm_gradient_once(mode):
    lstm = LSTM(3, 4, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    grads = _both(lambda m, x: np.sum(m(x)[0] ** 2), lstm, x, wrt=(0,))[mode][0]
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_grad_norm(grads, 1e-3)
    coef = 1e-3 / (norm + 1e-6)
    for key, g in grads.items():
        np.testing.assert_allclose(g, before[key] * coef, rtol=1e-12, err_msg=str(key))
    np.testing.assert_array_equal(grads[("bias_ih_l0",)], grads[("bias_hh_l0",)])


def test_disjoint_views_stay_views_and_overlapping_ones_are_copied():
    base = np.arange(10.0)
    left, right = base[:5], base[5:]
    kept = distinct.distinct_gradients([left, {"r": right}])
    assert kept[0] is left and kept[1]["r"] is right  # disjoint: no copy
    grid = np.arange(12.0).reshape(3, 4)
    columns = distinct.distinct_gradients([grid[:, :2], grid[:, 2:], grid[:, 1:3]])
    assert columns[0].base is not None and columns[1].base is not None  # views kept
    assert columns[2].base is None and np.array_equal(columns[2], grid[:, 1:3])  # overlapping
    same = distinct.distinct_gradients([base, None, 2.5, base])
    assert same[0] is base and same[3] is not base and same[1] is None and same[2] == 2.5


def test_docstring_example():
    result = doctest.testmod(distinct)
    assert result.attempted > 0 and result.failed == 0
