"""Pooling, Flatten, BatchNorm, LayerNorm, Dropout, Embedding, Chain."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_model_grads, rand

from nnflow import ad
from nnflow.functional import relu
from nnflow.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm,
    Chain,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2d,
    LayerError,
    LayerNorm,
    Linear,
    MaxPool2d,
    ShapeError,
)


def ref_pool(x, k, s, p, reduce, fill):
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    out = np.empty(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = reduce(x[:, :, i * s : i * s + k, j * s : j * s + k], axis=(2, 3))
    return out


POOLS = [(2, None, 0, (6, 6)), (2, None, 0, (7, 5)), (3, 2, 1, (7, 6)), (3, 1, 0, (5, 5)),
         (3, None, 0, (6, 6))]  # fmt: skip


@pytest.mark.parametrize("k, s, p, size", POOLS)
def test_max_pool_forward_and_gradcheck(k, s, p, size):
    pool = MaxPool2d(k, s, p)
    x = rand(2, 3, *size)  # continuous samples: no ties
    np.testing.assert_array_equal(pool(x), ref_pool(x, k, s or k, p, np.max, -np.inf))
    check_model_grads(pool, x)


@pytest.mark.parametrize("k, s, p, size", POOLS)
def test_avg_pool_forward_and_gradcheck(k, s, p, size):
    pool = AvgPool2d(k, s, p)
    x = rand(2, 3, *size)
    np.testing.assert_allclose(pool(x), ref_pool(x, k, s or k, p, np.mean, 0.0), rtol=1e-12)
    check_model_grads(pool, x)


def test_pool_float32_errors_and_repr():
    y = MaxPool2d(2)(rand(2, 3, 8, 8, dtype=np.float32))
    assert y.dtype == np.float32 and y.shape == (2, 3, 4, 4)
    with pytest.raises(ShapeError, match=r"expected a 4-d input"):
        MaxPool2d(2)(rand(3, 8, 8))
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        AvgPool2d(3)(rand(1, 1, 2, 2))
    with pytest.raises(ValueError, match="at most half the kernel"):
        MaxPool2d(2, padding=2)
    assert repr(MaxPool2d(3, 2)) == "MaxPool2d(3x3, stride=(2, 2))"


def test_adaptive_and_global_average_pooling():
    x = rand(2, 3, 7, 5)
    out = AdaptiveAvgPool2d((3, 2))(x)
    ref = np.empty((2, 3, 3, 2))
    for i in range(3):
        for j in range(2):
            r0, r1 = (i * 7) // 3, -(-((i + 1) * 7) // 3)
            c0, c1 = (j * 5) // 2, -(-((j + 1) * 5) // 2)
            ref[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    check_model_grads(AdaptiveAvgPool2d((3, 2)), x)
    np.testing.assert_allclose(AdaptiveAvgPool2d(1)(x)[:, :, 0, 0], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(GlobalAvgPool2d()(x), x.mean(axis=(2, 3)))
    check_model_grads(GlobalAvgPool2d(), x)


def test_flatten():
    x = rand(2, 3, 4, 5)
    assert Flatten()(x).shape == (2, 60)
    assert Flatten(0, 1)(x).shape == (6, 4, 5)
    assert Flatten(2)(x).shape == (2, 3, 20)
    check_model_grads(Flatten(), x)
    with pytest.raises(ShapeError, match="cannot flatten"):
        Flatten(3)(rand(2, 3))


# -- BatchNorm ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_batchnorm_training_forward_running_stats_and_eval(shape):
    bn = BatchNorm(3, momentum=0.2, dtype=np.float64)
    bn.weight, bn.bias = rand(3, seed=1), rand(3, seed=2)
    x = rand(*shape) * 3 + 1
    axes = (0,) + tuple(range(2, len(shape)))
    view = (1, 3) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    expected = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-5)
    expected = expected * bn.weight.reshape(view) + bn.bias.reshape(view)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-10)
    n = x.size // 3
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * n / (n - 1), rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y = bn(x)
    rm, rv = bn.running_mean.reshape(view), bn.running_var.reshape(view)
    ref = (x - rm) / np.sqrt(rv + 1e-5) * bn.weight.reshape(view) + bn.bias.reshape(view)
    np.testing.assert_allclose(y, ref, rtol=1e-10)
    assert int(bn.num_batches_tracked) == 1  # evaluation leaves the buffers alone


def test_batchnorm_gradcheck_train_and_eval_and_buffers_out_of_gradients():
    bn = BatchNorm(3, dtype=np.float64)
    bn.weight, bn.bias = rand(3, seed=1), rand(3, seed=2)
    x = rand(4, 3, 2, 2)
    check_model_grads(bn, x)
    _, g = ad.grad(lambda m, x: np.sum(m(x) ** 3), bn, x)
    assert set(g[0]) == {("weight",), ("bias",)}
    assert type(bn.running_mean) is np.ndarray and type(bn.running_var) is np.ndarray
    bn.eval()
    check_model_grads(bn, x)


def test_batchnorm_cumulative_average_and_float32():
    bn = BatchNorm(2, momentum=None)
    xs = [rand(5, 2, seed=s, dtype=np.float32) for s in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert bn.running_mean.dtype == np.float32 and bn(xs[0]).dtype == np.float32


def test_batchnorm_errors():
    with pytest.raises(ValueError, match="num_features must be positive"):
        BatchNorm(0)
    bn = BatchNorm(3)
    with pytest.raises(ShapeError, match="expected input 3 features on axis 1, got float32"):
        bn(rand(4, 2, dtype=np.float32))
    with pytest.raises(ShapeError, match="more than one value per channel"):
        bn(rand(1, 3, dtype=np.float32))
    with pytest.raises(ShapeError, match="expected a 2-d or 3-d or 4-d input"):
        bn(rand(3, dtype=np.float32))


# -- LayerNorm ----------------------------------------------------------------------------------
def test_layernorm_forward_gradcheck_float32():
    ln = LayerNorm((3, 4), dtype=np.float64)
    ln.weight, ln.bias = rand(3, 4, seed=1), rand(3, 4, seed=2)
    x = rand(2, 3, 4)
    flat = x.reshape(2, -1)
    ref = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln(x), ref.reshape(x.shape) * ln.weight + ln.bias, rtol=1e-10)
    check_model_grads(ln, x)
    ln32 = LayerNorm(4)
    assert ln32(rand(5, 4, dtype=np.float32)).dtype == np.float32
    with pytest.raises(ShapeError, match=r"expected input \(\.\.\., 4\)"):
        ln32(rand(5, 3, dtype=np.float32))
    ln.eval()
    np.testing.assert_allclose(ln(x), ref.reshape(x.shape) * ln.weight + ln.bias, rtol=1e-10)


# -- Dropout ------------------------------------------------------------------------------------
def test_dropout_train_eval_seeded_and_scaled():
    x = np.ones((200, 50), np.float32)
    y = Dropout(0.3, rng=1)(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.3, rng=1)(x), y)  # same seed, same mask
    drop = Dropout(0.3, rng=1)
    assert not np.array_equal(drop(x), drop(x))  # the generator advances
    assert drop.eval()(x) is x
    assert (Dropout(1.0)(x) == 0).all() and Dropout(0.0)(x) is x
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        Dropout(1.5)


def test_dropout_gradient_is_the_mask():
    drop = Dropout(0.5, rng=0)
    x = rand(4, 6)
    val, g = ad.grad(lambda m, x: np.sum(m(x)), drop, x)
    mask = Dropout(0.5, rng=0)(np.ones_like(x))
    np.testing.assert_allclose(g[1], mask)
    assert not g[0]  # the generator is no parameter (no leaves: None)


# -- Embedding ----------------------------------------------------------------------------------
def test_embedding_lookup_gradient_accumulates_and_padding():
    emb = Embedding(5, 3, padding_idx=0, rng=0, dtype=np.float64)
    assert (emb.weight[0] == 0).all()
    idx = np.array([[1, 2, 2], [0, 4, 1]])
    np.testing.assert_array_equal(emb(idx), emb.weight[idx])
    _, g = ad.grad(lambda m: np.sum(m(idx)), emb)
    counts = np.bincount(idx.ravel(), minlength=5).astype(float)
    counts[0] = 0  # padding gets no gradient
    np.testing.assert_allclose(g[0][("weight",)], np.repeat(counts[:, None], 3, axis=1))
    check_model_grads(emb, idx, wrt_inputs=False)
    assert Embedding(4, 2, rng=0)(np.array([3])).dtype == np.float32


def test_embedding_errors():
    emb = Embedding(4, 2, rng=0)
    with pytest.raises(LayerError, match=r"Embedding\(4 => 2\) got an index outside \[0, 4\)"):
        emb(np.array([4]))
    with pytest.raises(LayerError, match="expected integer indices"):
        emb(np.array([1.0]))
    with pytest.raises(ValueError, match="padding_idx 7"):
        Embedding(4, 2, padding_idx=7)


# -- Chain --------------------------------------------------------------------------------------
def test_chain_applies_in_order_paths_and_gradcheck():
    model = Chain(Linear(3, 4, rng=0, dtype=np.float64), np.tanh,
                  Linear(4, 2, rng=1, dtype=np.float64))  # fmt: skip
    x = rand(5, 3)
    l0, l2 = model[0], model[2]
    np.testing.assert_allclose(model(x), l2(np.tanh(l0(x))))
    assert len(model) == 3 and list(model)[1] is np.tanh and len(model[:2]) == 2
    val, g = ad.grad(lambda m, x: np.sum(m(x)), model, x)
    assert ("layers", 2, "weight") in g[0]
    check_model_grads(model, x)


def test_chain_rejects_non_callables_and_repr_lists_functions():
    with pytest.raises(TypeError, match="layer 1 is not callable"):
        Chain(Linear(2, 2), 3)
    assert "  relu,\n" in repr(Chain(Linear(2, 2), relu))
