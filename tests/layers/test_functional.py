"""Activations: closed forms, derivatives, extreme inputs, float32."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import rand

from nnflow import ad
from nnflow import functional as F  # noqa: N812  (the usual alias)

X = np.array([-3.0, -1.2, -0.3, 0.4, 1.1, 2.5])
ERF = np.vectorize(math.erf)

REFERENCES = {  # activation -> independent closed form
    F.relu: lambda x: np.where(x > 0, x, 0.0),
    F.leaky_relu: lambda x: np.where(x > 0, x, 0.01 * x),
    F.elu: lambda x: np.where(x > 0, x, np.exp(x) - 1),
    F.selu: lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
    F.gelu: lambda x: 0.5 * x * (1 + ERF(x / math.sqrt(2))),
    F.sigmoid: lambda x: 1 / (1 + np.exp(-x)),
    F.tanh: np.tanh,
    F.softplus: lambda x: np.log1p(np.exp(x)),
    F.softsign: lambda x: x / (1 + np.abs(x)),
    F.swish: lambda x: x / (1 + np.exp(-x)),
    F.erf: ERF,
}


@pytest.mark.parametrize("fn", list(REFERENCES), ids=lambda f: f.__name__)
def test_activation_matches_closed_form_and_gradcheck(fn):
    np.testing.assert_allclose(fn(X), REFERENCES[fn](X), rtol=1e-13, atol=1e-15)
    ad.gradcheck(lambda x: np.sum(fn(x) * np.arange(1.0, 7.0)), X)


@pytest.mark.parametrize("fn", list(REFERENCES), ids=lambda f: f.__name__)
def test_activation_float32_keeps_dtype(fn):
    x = X.astype(np.float32)
    assert fn(x).dtype == np.float32
    _, g = ad.grad(lambda x: np.sum(fn(x)), x)
    assert g[0].dtype == np.float32


def test_gelu_tanh_approximation_and_bad_argument():
    expected = 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X**3)))
    np.testing.assert_allclose(F.gelu(X, approximate="tanh"), expected, rtol=1e-13)
    ad.gradcheck(lambda x: np.sum(F.gelu(x, "tanh")), X)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(X, "fast")


def test_erf_is_accurate_over_its_whole_range():
    x = np.linspace(-7, 7, 2001)
    np.testing.assert_allclose(F.erf(x), ERF(x), rtol=2e-15, atol=2e-16)


def test_relu_derivative_is_zero_at_zero_like_pytorch():
    _, g = ad.grad(lambda x: np.sum(F.relu(x)), np.array([-1.0, 0.0, 1.0]))
    assert g[0].tolist() == [0.0, 0.0, 1.0]


def test_softmax_and_log_softmax():
    x = rand(3, 5)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(F.softmax(x, axis=1), e / e.sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(F.log_softmax(x, axis=0),
                               x - np.log(np.exp(x).sum(0, keepdims=True)), rtol=1e-13)  # fmt: skip
    w = rand(3, 5, seed=1)
    ad.gradcheck(lambda x: np.sum(F.softmax(x) * w), x)
    ad.gradcheck(lambda x: np.sum(F.log_softmax(x, axis=0) * w), x)


def test_extreme_inputs_stay_finite():
    big = np.array([-1000.0, 1000.0])
    assert F.sigmoid(big).tolist() == [0.0, 1.0]
    assert F.softplus(big).tolist() == [0.0, 1000.0]
    assert F.swish(big).tolist() == [-0.0, 1000.0]
    assert F.log_softmax(np.array([[1000.0, -1000.0]])).tolist() == [[0.0, -2000.0]]
    assert F.softmax(np.array([[1000.0, -1000.0]])).tolist() == [[1.0, 0.0]]
    for fn in (F.sigmoid, F.softplus, F.elu, F.gelu, F.tanh, F.softsign):
        _, g = ad.grad(lambda x, fn=fn: np.sum(fn(x)), big)
        assert np.isfinite(g[0]).all(), fn.__name__
    _, g = ad.grad(lambda x: np.sum(F.log_softmax(x) * np.array([[1.0, 2.0]])),
                   np.array([[1000.0, -1000.0]]))  # fmt: skip
    assert np.isfinite(g[0]).all()


def test_sigmoid_stable_accurate_and_warning_free():
    """The exp(-|x|) form: exact saturation at +-1000, full relative accuracy in both tails
    (no 1 - tiny cancellation for negative x), no overflow warning, float32 kept."""
    x = np.concatenate([np.linspace(-745.0, 40.0, 3001), [-1000.0, -0.0, 0.0, 1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is exact
        y = F.sigmoid(x)
        y32 = F.sigmoid(x.astype(np.float32))
    expected = np.array([1 / (1 + math.exp(-v)) if v > -700 else math.exp(v) for v in x])
    np.testing.assert_allclose(y, expected, rtol=4e-16, atol=0)
    assert y[-4:].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert y32.dtype == np.float32
    x32 = x.astype(np.float32).astype(np.float64)  # the float32 inputs, exactly
    expected32 = np.array([1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x32])
    normal = expected32 > np.finfo(np.float32).tiny  # subnormal results lose digits
    np.testing.assert_allclose(y32[normal], expected32[normal], rtol=5e-7, atol=0)
    np.testing.assert_allclose(y32[~normal], expected32[~normal], rtol=0, atol=2e-45)
    assert float(F.sigmoid(np.float32(-1000.0))) == 0.0 and F.sigmoid(np.array(2)).dtype.kind == "f"
    assert np.isnan(F.sigmoid(np.array([np.nan]))).all()
    ad.gradcheck(lambda x: np.sum(F.sigmoid(x) ** 2), np.array([-30.0, -2.0, 0.0, 3.0, 25.0]))


def test_get_activation():
    assert F.get_activation("gelu") is F.gelu and F.get_activation(np.tanh) is np.tanh
    with pytest.raises(ValueError, match="unknown activation 'Relu'"):
        F.get_activation("Relu")
