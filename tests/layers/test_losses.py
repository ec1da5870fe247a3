"""Losses: references, gradchecks, reductions, extreme logits, float32, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import rand

from nnflow import ad
from nnflow import losses as L  # noqa: N812

LOGITS = rand(4, 3)
LABELS = np.array([0, 2, 1, 2])


def ref_cross_entropy(logits, labels, smoothing=0.0):
    out = []
    for row, label in zip(logits, labels, strict=True):
        logp = row - math.log(sum(math.exp(v) for v in row))
        target = np.full(len(row), smoothing / len(row))
        target[label] += 1 - smoothing
        out.append(-float(np.dot(target, logp)))
    return np.array(out)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_reference_reductions_gradcheck(smoothing):
    ref = ref_cross_entropy(LOGITS, LABELS, smoothing)
    for reduction, want in (("none", ref), ("sum", ref.sum()), ("mean", ref.mean())):
        got = L.cross_entropy(LOGITS, LABELS, reduction, label_smoothing=smoothing)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    ad.gradcheck(lambda z: L.cross_entropy(z, LABELS, label_smoothing=smoothing), LOGITS)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    _, g = ad.grad(lambda z: L.cross_entropy(z, LABELS, "sum"), LOGITS)
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)
    np.testing.assert_allclose(g[0], p - np.eye(3)[LABELS], rtol=1e-12)


def test_cross_entropy_spatial_and_probability_targets():
    logits, labels = rand(2, 3, 4), np.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    per = L.cross_entropy(logits, labels, "none")
    assert per.shape == (2, 4)
    ref = ref_cross_entropy(logits.transpose(0, 2, 1).reshape(-1, 3), labels.ravel())
    np.testing.assert_allclose(per.ravel(), ref, rtol=1e-12)
    probs = np.eye(3)[LABELS]
    np.testing.assert_allclose(L.cross_entropy(LOGITS, probs), L.cross_entropy(LOGITS, LABELS))
    ad.gradcheck(lambda z, t: L.cross_entropy(z, t, label_smoothing=0.2), LOGITS, probs * 0.9)


def test_cross_entropy_is_stable_for_extreme_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    assert L.cross_entropy(logits, np.array([0, 0]), "none").tolist() == [0.0, 2000.0]
    _, g = ad.grad(lambda z: L.cross_entropy(z, np.array([0, 0])), logits)
    np.testing.assert_allclose(g[0], [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-12)
    f32 = L.cross_entropy(logits.astype(np.float32), np.array([0, 0]))
    assert f32.dtype == np.float32 and float(f32) == 1000.0


def test_nll_matches_cross_entropy_of_log_softmax():
    logp = LOGITS - np.log(np.exp(LOGITS).sum(1, keepdims=True))
    np.testing.assert_allclose(L.nll(logp, LABELS), ref_cross_entropy(LOGITS, LABELS).mean())
    np.testing.assert_allclose(L.nll(logp, LABELS, "none"), -logp[np.arange(4), LABELS])
    ad.gradcheck(lambda p: L.nll(p, LABELS, "sum"), logp)


def test_mse():
    a, b = rand(3, 4), rand(3, 4, seed=1)
    np.testing.assert_allclose(L.mse(a, b), ((a - b) ** 2).mean())
    np.testing.assert_allclose(L.mse(a, b, "sum"), ((a - b) ** 2).sum())
    ad.gradcheck(L.mse, a, b)
    assert L.mse(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32


def test_binary_cross_entropy_probabilities_and_clamp():
    p = np.array([0.1, 0.5, 0.8, 0.99])
    t = np.array([0.0, 1.0, 1.0, 0.3])
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(L.binary_cross_entropy(p, t, "none"), ref, rtol=1e-12)
    ad.gradcheck(L.binary_cross_entropy, p, t)
    edge = L.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]), "none")
    assert edge.tolist() == [100.0, 100.0]  # PyTorch clamps log at -100


def test_binary_cross_entropy_with_logits_reference_and_extremes():
    x, t = rand(5), np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    p = 1 / (1 + np.exp(-x))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(L.binary_cross_entropy_with_logits(x, t, "none"), ref, rtol=1e-12)
    ad.gradcheck(L.binary_cross_entropy_with_logits, x, t)
    w = 3.0
    ref_w = -(w * t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(
        L.binary_cross_entropy_with_logits(x, t, "none", pos_weight=w), ref_w, rtol=1e-12
    )
    big = np.array([1000.0, -1000.0, 1000.0, -1000.0])
    tt = np.array([1.0, 0.0, 0.0, 1.0])
    assert L.binary_cross_entropy_with_logits(big, tt, "none").tolist() == [0, 0, 1000, 1000]
    _, g = ad.grad(lambda z: L.binary_cross_entropy_with_logits(z, tt, "sum"), big)
    assert g[0].tolist() == [0.0, 0.0, 1.0, -1.0]


def test_gaussian_kl_closed_form():
    mu, logvar = rand(3, 2), rand(3, 2, seed=1)
    var = np.exp(logvar)
    per = 0.5 * np.sum(var + mu**2 - 1 - logvar, axis=-1)
    np.testing.assert_allclose(L.gaussian_kl(mu, logvar, "none"), per, rtol=1e-12)
    np.testing.assert_allclose(L.gaussian_kl(mu, logvar), per.mean(), rtol=1e-12)
    ad.gradcheck(L.gaussian_kl, mu, logvar)


def test_loss_errors():
    with pytest.raises(ValueError, match="reduction must be one of"):
        L.mse(np.ones(2), np.ones(2), "avg")
    same_shape = r"mse: input and target must have the same shape, got \(2,\) and \(3,\)"
    with pytest.raises(ValueError, match=same_shape):
        L.mse(np.ones(2), np.ones(3))
    labels = r"labels of shape \(N, \.\.\.\); got scores \(4, 3\) and labels \(3,\)"
    with pytest.raises(ValueError, match=labels):
        L.cross_entropy(LOGITS, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integers"):
        L.nll(LOGITS, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        L.cross_entropy(LOGITS, LABELS, label_smoothing=2.0)


@pytest.mark.parametrize("flag", ["0", "1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares_on_each_path(monkeypatch, flag, dtype):
    """``sum_squares`` (mse's reduction): the kernel (float64 accumulator) and NumPy's
    ``sum(x * x)`` both against an exact float64 sum of the rounded squares, on dense arrays
    of any axis order and on strided ones (which always take NumPy); its rule by gradcheck."""
    if flag == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    rng = np.random.default_rng(8)
    base = rng.normal(size=(64, 30, 50)).astype(dtype)
    for x in (base, base.transpose(2, 0, 1), base[:, ::2]):
        got = L.sum_squares(x)
        exact = np.sum((x * x).astype(np.float64))  # the squares rounded as NumPy rounds them
        assert got.dtype == dtype and got.shape == ()
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(float(got), exact, rtol=rtol)
    ad.gradcheck(L.sum_squares, rng.normal(size=(3, 5)))
    t = rng.normal(size=(6, 7))
    grad = ad.grad(lambda x: L.mse(x, t), t + 1.0)[1][0]  # 2 (x - t) / n
    np.testing.assert_allclose(grad, np.full(t.shape, 2 / 42))


def test_sum_squares_kernel_runs_on_dense_float_arrays(monkeypatch):
    pytest.importorskip("numba")
    from nnflow import jit

    calls = []
    real = L.SUM_SQUARES
    fake = jit.Kernel(real.fn)
    fake.__dict__["compiled"] = lambda x: calls.append(x.shape) or real.compiled(x)
    monkeypatch.setattr(L, "SUM_SQUARES", fake)
    monkeypatch.setenv("NNFLOW_NUMBA", "1")
    L.sum_squares(np.ones((4, 5), np.float32).T)
    L.sum_squares(np.ones((4, 10))[:, ::2])  # strided: NumPy
    L.sum_squares(np.ones((4, 5), np.float16))  # no float16 kernel
    assert calls == [(20,)]


def test_reduction_kernels_docstring_runs():
    import doctest

    from nnflow import reduction_kernels

    result = doctest.testmod(reduction_kernels)
    assert result.attempted > 0 and result.failed == 0


def test_mse_of_empty_arrays_is_nan_as_numpys_mean():
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(L.mse(np.zeros((0, 3)), np.zeros((0, 3))))
        assert L.mse(np.zeros((0, 3)), np.zeros((0, 3)), "sum") == 0.0
