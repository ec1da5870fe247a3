"""The convolution primitives' GEMM layouts (flat stride-1 grid vs compact columns) and memory
layouts (NCHW, channel-major, strided views), and max-pooling's tie rule in either layout,
against independent NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad
from nnflow.layers import convolution
from nnflow.layers.convolution import conv2d, conv2d_weight, conv_transpose2d
from nnflow.layers.pooling_ops import max_pool2d, max_pool2d_scatter


def ref_conv2d(x, w, stride, padding, dilation, groups):
    """Direct sum over kernel offsets of strided slices of the zero-padded input."""
    (pt, pb), (pl, pr) = padding
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg : (g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                           j * dw : j * dw + sw * (wo - 1) + 1 : sw]  # fmt: skip
                wk = w[g * og : (g + 1) * og, :, i, j]
                y[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wk)
    return y


def ref_transposes(x, w, dy, stride, padding, dilation, groups):
    """``conv2d``'s input and filter gradients through the reference (its adjoints, by
    ``<conv(x, w), dy>`` differentiated exactly: the reference is linear in each)."""
    dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        dx[idx] = np.sum(ref_conv2d(e, w, stride, padding, dilation, groups) * dy)
    dw = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        dw[idx] = np.sum(ref_conv2d(x, e, stride, padding, dilation, groups) * dy)
    return dx, dw


# (x shape, w shape, stride, padding, dilation, groups), flat-eligible ones first
GEOMETRIES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 4, 8, 9), (4, 2, 2, 3), (1, 1), ((1, 0), (0, 2)), (1, 1), 2),
    ((1, 4, 9, 9), (4, 2, 2, 2), (1, 1), ((1, 0), (0, 1)), (2, 1), 2),
    ((2, 2, 5, 5), (3, 2, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 2, 7, 6), (3, 2, 3, 2), (2, 1), ((1, 1), (0, 1)), (1, 1), 1),
    ((1, 4, 9, 8), (6, 2, 3, 3), (2, 3), ((0, 2), (1, 0)), (1, 2), 2),
]


def _flat(x_shape, w_shape, stride, padding, dilation):
    out = convolution._out_size(x_shape, w_shape[2:], stride, padding, dilation)
    return convolution._Geometry(x_shape, out, w_shape[2:], stride, padding, dilation).flat


def test_the_geometries_cover_both_column_layouts():
    flat = [_flat(xs, ws, s, p, d) for xs, ws, s, p, d, _ in GEOMETRIES]
    assert any(flat) and not all(flat)


@pytest.mark.parametrize("compact", [False, True], ids=["as-chosen", "compact-only"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_primitives_match_the_references(geo, compact, monkeypatch):
    if compact:
        monkeypatch.setattr(convolution, "_FLAT_WASTE", 0.0)
    x_shape, w_shape, stride, padding, dilation, groups = geo
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    b = rng.normal(size=w_shape[0])
    y = ref_conv2d(x, w, stride, padding, dilation, groups)
    dy = rng.normal(size=y.shape)
    dx, dw = ref_transposes(x, w, dy, stride, padding, dilation, groups)
    args = (stride, padding, dilation, groups)
    np.testing.assert_allclose(conv2d(x, w, b, *args), y + b[:, None, None], atol=1e-12)
    np.testing.assert_allclose(conv_transpose2d(dy, w, None, *args, x_shape[2:]), dx, atol=1e-12)
    cb = rng.normal(size=x_shape[1])
    np.testing.assert_allclose(conv_transpose2d(dy, w, cb, *args, x_shape[2:]),
                               dx + cb[:, None, None], atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(conv2d_weight(x, dy, *args, w_shape[2:]), dw, atol=1e-12)


def _layouts(a):
    """``a`` as C-contiguous NCHW, as a channel-major array, and as a strided slice."""
    channel_major = np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    padded = np.zeros(a.shape[:3] + (a.shape[3] + 3,))
    padded[..., 1 : 1 + a.shape[3]] = a
    return {"nchw": a, "channel-major": channel_major, "slice": padded[..., 1 : 1 + a.shape[3]]}


@pytest.mark.parametrize("geo", [GEOMETRIES[1], GEOMETRIES[4]], ids=["flat", "compact"])
def test_any_memory_layout_of_the_inputs_gives_the_same_result(geo):
    x_shape, w_shape, stride, padding, dilation, groups = geo
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    args = (stride, padding, dilation, groups)
    y = conv2d(x, w, None, *args)
    dy = rng.normal(size=y.shape)
    dx = conv_transpose2d(dy, w, None, *args, x_shape[2:])
    dw = conv2d_weight(x, dy, *args, w_shape[2:])
    for xv in _layouts(x).values():
        np.testing.assert_array_equal(conv2d(xv, w, None, *args), y)
        np.testing.assert_array_equal(conv2d_weight(xv, dy, *args, w_shape[2:]), dw)
    for dyv in _layouts(dy).values():
        np.testing.assert_array_equal(conv_transpose2d(dyv, w, None, *args, x_shape[2:]), dx)
        np.testing.assert_array_equal(conv2d_weight(x, dyv, *args, w_shape[2:]), dw)


def test_outputs_are_channel_major_views_that_chain():
    rng = np.random.default_rng(3)
    x, w1, w2 = (
        rng.normal(size=(3, 2, 9, 9)),
        rng.normal(size=(4, 2, 3, 3)),
        rng.normal(size=(5, 4, 3, 3)),
    )
    y1 = conv2d(x, w1)
    assert y1.shape == (3, 4, 7, 7) and not y1.flags.c_contiguous
    h = np.maximum(y1, 0)  # NumPy keeps the channel-major layout
    assert h.transpose(1, 0, 2, 3).flags.c_contiguous
    one = ((0, 0), (0, 0))
    expected = ref_conv2d(np.maximum(ref_conv2d(x, w1, (1, 1), one, (1, 1), 1), 0), w2,
                          (1, 1), one, (1, 1), 1)  # fmt: skip
    np.testing.assert_allclose(conv2d(h, w2), expected, atol=1e-12)


def test_float32_in_float32_out_on_both_column_layouts(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3, 10, 10)).astype(np.float32)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    for waste in (1.5, 0.0):
        monkeypatch.setattr(convolution, "_FLAT_WASTE", waste)
        y = conv2d(x, w, np.ones(5, np.float32))
        dy = np.ones_like(y)
        outs = [y, conv_transpose2d(dy, w, None, input_size=(10, 10)),
                conv2d_weight(x, dy, kernel_size=(3, 3))]  # fmt: skip
        assert all(o.dtype == np.float32 for o in outs)
        ref = ref_conv2d(x.astype(np.float64), w.astype(np.float64), (1, 1),
                         ((0, 0), (0, 0)), (1, 1), 1)  # fmt: skip
        np.testing.assert_allclose(y, ref + 1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geo", [GEOMETRIES[2], GEOMETRIES[5]], ids=["flat", "compact"])
def test_gradcheck_through_all_three_primitives(geo):
    x_shape, w_shape, stride, padding, dilation, groups = geo
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    args = (stride, padding, dilation, groups)
    dy = rng.normal(size=conv2d(x, w, None, *args).shape)
    cx, cw = rng.normal(size=x_shape), rng.normal(size=w_shape)  # random projections
    ad.gradcheck(lambda x, w: np.sum(conv2d(x, w, None, *args) * dy), x, w)
    ad.gradcheck(lambda dy, w: np.sum(conv_transpose2d(dy, w, None, *args, x_shape[2:]) * cx),
                 dy, w)  # fmt: skip
    ad.gradcheck(lambda x, dy: np.sum(conv2d_weight(x, dy, *args, w_shape[2:]) * cw), x, dy)

    def second(x, w):  # every primitive's rule differentiated once more
        g = ad.grad(lambda x, w: np.sum(np.tanh(conv2d(x, w, None, *args)) * dy), x, w)[1]
        return np.sum(g[0] ** 2) + np.sum(g[1] ** 2)

    ad.gradcheck(second, x, w, atol=1e-5, rtol=1e-4)


# -- max pooling: the first maximum of a window takes the gradient, in either layout -------------
def ref_max_pool_scatter(dy, x, kernel, stride):
    n, c, ho, wo = dy.shape
    dx = np.zeros_like(x)
    for idx in np.ndindex(n, c, ho, wo):
        i0, j0 = idx[2] * stride[0], idx[3] * stride[1]
        window = x[idx[0], idx[1], i0 : i0 + kernel[0], j0 : j0 + kernel[1]]
        i, j = np.unravel_index(np.argmax(window), window.shape)  # the first maximum
        dx[idx[0], idx[1], i0 + i, j0 + j] += dy[idx]
    return dx


@pytest.mark.parametrize("layout", ["nchw", "channel-major", "slice"])
@pytest.mark.parametrize("geo", [((2, 2), (2, 2)), ((3, 2), (1, 2))], ids=["tiles", "overlap"])
def test_max_pool_scatter_ties_go_to_the_first_maximum(layout, geo):
    rng = np.random.default_rng(6)
    x = np.maximum(rng.integers(-2, 3, size=(2, 3, 6, 8)).astype(np.float64), 0)  # many ties
    x = _layouts(x)[layout]
    kernel, stride = geo
    y = max_pool2d(x, kernel, stride, (0, 0))
    dy = rng.normal(size=y.shape)
    dx = max_pool2d_scatter(dy, x, y, kernel, stride, (0, 0))
    np.testing.assert_allclose(dx, ref_max_pool_scatter(dy, np.asarray(x), kernel, stride),
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("padding", [1, "same"], ids=["symmetric", "asymmetric"])
def test_gemm_formulation_on_the_gpu_stand_in(fake_gpu, monkeypatch, padding):
    """Without cuDNN (or with asymmetric padding) the GEMM formulation runs on the device's
    array module: the same gradients as on the CPU, on the device."""
    from nnflow import backend, layers
    from nnflow.backend import to_device

    monkeypatch.setattr(backend, "_load_cudnn", lambda: (None, "no cuDNN in this test"))
    net = layers.Chain(layers.Conv2d(2, 3, 2, padding=padding, rng=0), layers.MaxPool2d(2))
    net = net.astype(np.float64)
    x = np.random.default_rng(7).normal(size=(2, 2, 6, 6))
    want_value, want = ad.grad(lambda m, x: np.sum(m(x) ** 2), net, x)
    net.to("gpu")
    value, g = ad.grad(lambda m, x: np.sum(m(x) ** 2), net, to_device(x, "gpu"))
    np.testing.assert_allclose(float(to_device(value, "cpu")), float(want_value), rtol=1e-12)
    for path, grad in want[0].items():
        assert backend.device_of(g[0][path]) == "gpu"
        np.testing.assert_allclose(to_device(g[0][path], "cpu"), grad, rtol=1e-12)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_the_im2col_cache_gives_the_references_values(geo):
    """``conv2d(..., cols=conv2d_columns(x))`` and ``conv2d_weight(..., cols=)`` against the
    loop references, with and without the bias's row of ones (one group; grouped
    convolutions refuse a cache)."""
    x_shape, w_shape, stride, padding, dilation, groups = geo
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=w_shape[0])
    y = ref_conv2d(x, w, stride, padding, dilation, groups)
    dy = rng.normal(size=y.shape)
    dw = ref_transposes(x, w, dy, stride, padding, dilation, groups)[1]
    args, geometry = (stride, padding, dilation, groups), (stride, padding, dilation)
    cols = convolution.conv2d_columns(x, w_shape[2:], *geometry, ones=True)
    bare = convolution.conv2d_columns(x, w_shape[2:], *geometry)
    n_rows = x_shape[1] * w_shape[2] * w_shape[3]
    assert cols.shape == (n_rows + 1, y.shape[0] * y.shape[2] * y.shape[3])
    np.testing.assert_array_equal(cols[:-1], bare)
    assert (cols[-1] == 1).all() and not np.shares_memory(bare, x)
    if groups != 1:
        with pytest.raises(ValueError, match="one group"):
            conv2d(x, w, b, *args, cols=cols)
        return
    np.testing.assert_allclose(conv2d(x, w, b, *args, cols=cols), y + b[:, None, None],
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(conv2d(x, w, None, *args, cols=bare), y, atol=1e-12)
    for c in (cols, bare):  # the filter gradient ignores the row of ones
        np.testing.assert_allclose(conv2d_weight(x, dy, *args, w_shape[2:], cols=c), dw,
                                   atol=1e-12)  # fmt: skip


def test_a_cache_for_other_arguments_is_refused_naming_both_shapes():
    x, w = np.ones((2, 3, 6, 6)), np.ones((4, 3, 3, 3))
    cols = convolution.conv2d_columns(x, (3, 3))
    with pytest.raises(ValueError, match=r"cols \(27, 32\).*x \(2, 3, 6, 6\).*\(28, 32\)"):
        conv2d(x, w, np.ones(4), cols=cols)  # a bias needs the row of ones
    with pytest.raises(ValueError, match="cols"):
        conv2d(x[:1], w, None, cols=cols)  # another batch
    with pytest.raises(ValueError, match="float32"):
        conv2d(x, w, None, cols=cols.astype(np.float32))


def test_conv2d_layer_records_the_cache_and_the_compiled_step_reuses_it():
    """On NumPy the layer builds the im2col matrix as its own node: the compiled step passes
    it to the forward GEMM and to the filter gradient (built once, into a planned buffer),
    and the gradients are those of the uncached primitives."""
    from nnflow.layers import Conv2d

    layer = Conv2d(2, 3, 3, padding=1, rng=0, dtype=np.float64)
    x = np.random.default_rng(6).normal(size=(2, 2, 6, 5))

    def loss(m, x):
        return np.sum(np.sin(m(x)))

    source = ad.compile_grad(loss, wrt=(0, 1)).source(layer, x)
    assert source.count("conv2d_columns(") == 1 and "out=B" in source.split("conv2d_columns(")[1]
    assert source.count(", out=B") >= 1 and "conv2d_weight(" in source
    value, (g_layer, g_x) = ad.compile_grad(loss, wrt=(0, 1))(layer, x)

    def plain(x, w, b):
        return np.sum(np.sin(conv2d(x, w, b, (1, 1), ((1, 1), (1, 1)))))

    value0, (gx, gw, gb) = ad.grad(plain, x, layer.weight, layer.bias, wrt=(0, 1, 2))
    np.testing.assert_allclose(value, value0, rtol=1e-12)
    np.testing.assert_allclose(g_x, gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_layer[("weight",)], gw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_layer[("bias",)], gb, rtol=1e-10, atol=1e-12)
    ad.gradcheck(loss, layer, x)


@pytest.mark.parametrize("flag", ["0", "1"])
def test_the_cache_is_never_a_view_of_x(monkeypatch, flag):
    """A 1x1 kernel's im2col matrix is ``x`` reshaped: the cache must still be a copy (a later
    in-place change of ``x`` must not change what the filter gradient reads), on either path."""
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    x = np.ascontiguousarray(
        np.random.default_rng(3).normal(size=(3, 2, 4, 4)).transpose(1, 0, 2, 3)
    ).transpose(1, 0, 2, 3)
    cols = convolution.conv2d_columns(x, (1, 1))
    assert not np.shares_memory(cols, x)
    np.testing.assert_array_equal(cols, x.transpose(1, 0, 2, 3).reshape(2, -1))


def test_grouped_and_gpu_arrays_take_no_cache(fake_gpu):
    from nnflow.backend import to_device

    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3))
    assert convolution.use_columns(x, w) and not convolution.use_columns(x, w, groups=2)
    assert not convolution.use_columns(to_device(x, "gpu"), to_device(w, "gpu"))
