"""Linear, Conv1d, Conv2d, ConvTranspose2d: forward vs plain-NumPy loops, gradchecks, float32,
constructor and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import check_model_grads, rand

from nnflow import ad
from nnflow.functional import relu
from nnflow.layers import Conv1d, Conv2d, ConvTranspose2d, Linear, ShapeError


# -- independent references: direct loops over output positions ---------------------------------
def ref_conv2d(x, w, b, stride, pad, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for p in range(kh):
                    for q in range(kw):
                        patch = x[:, g * cg : (g + 1) * cg, i * stride[0] + p * dilation[0],
                                  j * stride[1] + q * dilation[1]]  # fmt: skip
                        y[:, oc, i, j] += patch @ w[oc, :, p, q]
    return y if b is None else y + b[None, :, None, None]


def ref_conv_transpose2d(x, w, b, stride, pad, out_pad, groups):
    """Scatter every input pixel times the kernel into the output, then crop the padding."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    full_h, full_w = (h - 1) * stride + kh + out_pad, (wd - 1) * stride + kw + out_pad
    y = np.zeros((n, og * groups, full_h, full_w))
    cg = c // groups
    for ic in range(c):
        g = ic // cg
        for i in range(h):
            for j in range(wd):
                contrib = x[:, ic, i, j][:, None, None, None] * w[ic][None]
                y[:, g * og : (g + 1) * og, i * stride : i * stride + kh,
                  j * stride : j * stride + kw] += contrib  # fmt: skip
    y = y[:, :, pad : full_h - pad, pad : full_w - pad]
    return y if b is None else y + b[None, :, None, None]


# -- Linear -------------------------------------------------------------------------------------
def test_linear_forward_matches_numpy():
    layer = Linear(5, 3, rng=0, dtype=np.float64)
    x = rand(4, 5)
    np.testing.assert_allclose(layer(x), x @ layer.weight.T + layer.bias, rtol=1e-12)
    x3 = rand(2, 4, 5)
    np.testing.assert_allclose(layer(x3), np.einsum("abi,oi->abo", x3, layer.weight) + layer.bias)


def test_linear_default_init_is_pytorch_uniform():
    layer = Linear(100, 50, rng=0)
    bound = 1 / math.sqrt(100)
    assert layer.weight.shape == (50, 100) and layer.bias.shape == (50,)
    assert layer.weight.dtype == np.float32
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.weight).max() > 0.9 * bound
    assert abs(layer.weight.std() - bound / math.sqrt(3)) < 0.01


def test_linear_seeded_init_repeats():
    np.testing.assert_array_equal(Linear(4, 4, rng=3).weight, Linear(4, 4, rng=3).weight)
    assert not np.array_equal(Linear(4, 4, rng=3).weight, Linear(4, 4, rng=4).weight)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, np.tanh])
def test_linear_gradcheck(bias, activation):
    layer = Linear(4, 3, bias=bias, activation=activation, rng=0, dtype=np.float64)
    check_model_grads(layer, rand(5, 4))
    check_model_grads(layer, rand(2, 3, 4))  # batch axes folded in dW


def test_linear_float32_and_activation():
    layer = Linear(4, 3, activation=relu, rng=0)
    x = rand(6, 4, dtype=np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and (y >= 0).all()
    val, g = ad.grad(lambda m: np.sum(m(x)), layer)
    assert g[0][("weight",)].dtype == np.float32
    assert repr(layer) == "Linear(4 => 3, relu)  # 15 parameters"


def test_linear_errors():
    with pytest.raises(ValueError, match="must be positive"):
        Linear(0, 3)
    with pytest.raises(ShapeError, match=r"Linear\(4 => 3\) expected input \(\.\.\., 4\), got"):
        Linear(4, 3)(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        Linear(4, 3, activation="nope")


# -- Conv2d -------------------------------------------------------------------------------------
CONV_CASES = [  # in, out, kernel, stride, padding, dilation, groups, input HxW
    (2, 3, 3, 1, 0, 1, 1, (6, 5)),
    (2, 4, (3, 2), (2, 1), (1, 0), 1, 2, (7, 6)),
    (3, 3, 2, 1, 1, 2, 3, (5, 5)),
    (1, 2, 3, 2, 1, 1, 1, (6, 6)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c}")
def test_conv2d_forward_matches_loops(case):
    cin, cout, k, s, p, d, g, size = case
    conv = Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, rng=0,
                  dtype=np.float64)  # fmt: skip
    x = rand(2, cin, *size)
    expected = ref_conv2d(x, conv.weight, conv.bias, conv.stride,
                          tuple(q[0] for q in conv.padding), conv.dilation, g)  # fmt: skip
    np.testing.assert_allclose(conv(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES[:3], ids=lambda c: f"{c}")
def test_conv2d_gradcheck(case):
    cin, cout, k, s, p, d, g, size = case
    conv = Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, activation=np.tanh,
                  rng=0, dtype=np.float64)  # fmt: skip
    check_model_grads(conv, rand(2, cin, *size))


def test_conv2d_same_padding_keeps_the_size_even_kernel_pads_after():
    conv = Conv2d(1, 1, 4, padding="same", bias=False, rng=0, dtype=np.float64)
    x = rand(1, 1, 6, 6)
    assert conv.padding == ((1, 2), (1, 2))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 2), (1, 2)))
    expected = ref_conv2d(xp, conv.weight, None, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(conv(x), expected, rtol=1e-10)
    check_model_grads(conv, x)


def test_conv2d_second_order_through_the_layer():
    conv = Conv2d(1, 2, 2, rng=0, dtype=np.float64)
    x = rand(1, 1, 4, 4)

    def grad_norm(m, x):
        g = ad.grad(lambda m, x: np.sum(np.tanh(m(x))), m, x)[1]
        return np.sum(g[1] ** 2) + np.sum(g[0][("weight",)] ** 2)

    ad.gradcheck(grad_norm, conv, x, atol=1e-5, rtol=1e-4)


def test_conv2d_float32():
    conv = Conv2d(3, 4, 3, padding=1, rng=0)
    x = rand(2, 3, 8, 8, dtype=np.float32)
    y = conv(x)
    assert y.dtype == np.float32 and y.shape == (2, 4, 8, 8)
    expected = ref_conv2d(x.astype(np.float64), conv.weight.astype(np.float64),
                          conv.bias.astype(np.float64), (1, 1), (1, 1), (1, 1), 1)  # fmt: skip
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    _, g = ad.grad(lambda m, x: np.sum(m(x) ** 2), conv, x)
    assert g[1].dtype == np.float32 and g[0][("weight",)].dtype == np.float32


def test_conv2d_errors():
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        Conv2d(3, 4, -1)
    with pytest.raises(ValueError, match="must be positive"):
        Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        Conv2d(1, 1, 3, stride=2, padding="same")
    conv = Conv2d(3, 4, 3, rng=0)
    rank = r"expected a 4-d input \(N, C, H, W\), got float32\[3, 8, 8\]"
    with pytest.raises(ShapeError, match=rank):
        conv(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="expected 3 input channels"):
        conv(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        conv(np.zeros((1, 3, 2, 2), np.float32))


def test_conv2d_repr_and_pytorch_shapes():
    conv = Conv2d(4, 8, 3, stride=2, padding=1, groups=2, activation="relu")
    assert conv.weight.shape == (8, 2, 3, 3) and conv.bias.shape == (8,)
    text = "Conv2d(4 => 8, 3x3, stride=2, padding=1, groups=2, relu)  # 152 parameters"
    assert repr(conv) == text


# -- Conv1d -------------------------------------------------------------------------------------
def test_conv1d_forward_and_gradcheck():
    conv = Conv1d(2, 3, 3, stride=2, padding=1, dilation=1, rng=0, dtype=np.float64)
    x = rand(2, 2, 9)
    assert conv.weight.shape == (3, 2, 3)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    lo = (9 + 2 - 3) // 2 + 1
    expected = (
        np.stack(
            [np.einsum("nck,ock->no", xp[:, :, 2 * t : 2 * t + 3], conv.weight) for t in range(lo)],
            axis=-1,
        )
        + conv.bias[None, :, None]
    )
    np.testing.assert_allclose(conv(x), expected, rtol=1e-10)
    check_model_grads(conv, x)
    with pytest.raises(ShapeError, match=r"expected a 3-d input \(N, C, L\)"):
        conv(rand(2, 9))


# -- ConvTranspose2d ----------------------------------------------------------------------------
TRANSPOSE_CASES = [  # in, out, kernel, stride, padding, output_padding, groups
    (2, 3, 3, 1, 0, 0, 1),
    (2, 2, 3, 2, 1, 1, 1),
    (4, 2, 2, 2, 0, 0, 2),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"{c}")
def test_conv_transpose2d_forward_matches_scatter_loops(case):
    cin, cout, k, s, p, op, g = case
    layer = ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g,
                            rng=0, dtype=np.float64)  # fmt: skip
    assert layer.weight.shape == (cin, cout // g, k, k)
    x = rand(2, cin, 4, 3)
    expected = ref_conv_transpose2d(x, layer.weight, layer.bias, s, p, op, g)
    y = layer(x)
    assert y.shape == expected.shape == (2, cout, *layer.output_size(4, 3))
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    check_model_grads(layer, x)


def test_conv_transpose2d_is_the_input_gradient_of_conv2d():
    conv = Conv2d(2, 3, 3, stride=2, padding=1, bias=False, rng=0, dtype=np.float64)
    up = ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=0, bias=False, rng=1,
                         dtype=np.float64)  # fmt: skip
    up.weight = conv.weight
    x, dy = rand(1, 2, 7, 7), rand(1, 3, 4, 4, seed=1)
    _, g = ad.grad(lambda x: np.sum(conv(x) * dy), x)
    np.testing.assert_allclose(up(dy), g[0], rtol=1e-12)


def test_conv_transpose2d_errors_and_float32():
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2d(1, 1, 3, stride=1, output_padding=1)
    layer = ConvTranspose2d(4, 2, 4, stride=2, padding=1, rng=0)
    y = layer(rand(2, 4, 5, 5, dtype=np.float32))
    assert y.shape == (2, 2, 10, 10) and y.dtype == np.float32
    with pytest.raises(ShapeError, match="expected 4 input channels"):
        layer(rand(2, 3, 5, 5, dtype=np.float32))
