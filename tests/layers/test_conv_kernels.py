"""The convolution kernels (nnflow/layers/conv_kernels.py) against the NumPy path.

col2im (``conv_transpose2d``, flat layout): both paths make the same additions in the same
order, so the data gradient must agree bitwise (and in layout), with and without Numba, in
float32 and float64, over the geometries of the flat layout (padding, asymmetric padding,
dilation, groups, bias), with ``dy`` channel-major (put on its zero-padded grid by a kernel)
or NCHW. im2col (compact columns, stride 1: ``conv2d_weight``) is a copy, so the filter
gradient must agree bitwise too. The Numba half is skipped only where Numba is missing.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nnflow import ad, jit
from nnflow.layers import conv_kernels, convolution
from nnflow.layers.convolution import conv2d, conv_transpose2d

needs_numba = pytest.mark.skipif(
    not jit.numba_available(), reason="numba is not installed (pip install 'nnflow[fast]')"
)

GEOMETRIES = {  # x shape, w shape, (stride, padding, dilation, groups)
    "plain": ((3, 4, 14, 13), (5, 4, 3, 3), ((1, 1), ((0, 0), (0, 0)), (1, 1), 1)),
    "padded": ((2, 3, 12, 12), (4, 3, 3, 3), ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)),
    "asymmetric-dilated-groups": (
        (2, 4, 12, 13),
        (6, 2, 2, 3),
        ((1, 1), ((1, 0), (0, 2)), (2, 1), 2),
    ),  # fmt: skip
    "1x1": ((2, 3, 4, 5), (2, 3, 1, 1), ((1, 1), ((0, 0), (0, 0)), (1, 1), 1)),
}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["channel-major", "nchw"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_conv_transpose_paths_agree_bitwise(monkeypatch, name, layout, bias, dtype):
    xs, ws, geo = GEOMETRIES[name]
    rng = np.random.default_rng(0)
    w = rng.normal(size=ws).astype(dtype)
    y = conv2d(rng.normal(size=xs).astype(dtype), w, None, *geo)
    dy = rng.normal(size=y.shape).astype(dtype)
    if layout == "channel-major":  # (the grid kernel's case; NCHW: NumPy's zeros and copy)
        dy = dy.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)
    b = rng.normal(size=xs[1]).astype(dtype) if bias else None
    assert convolution._Geometry(xs, y.shape[2:], ws[2:], *geo[:3]).flat  # the kernel's layout
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        out.append(conv_transpose2d(dy, w, b, *geo, xs[2:]))
    assert out[0].dtype == out[1].dtype == dtype and out[0].strides == out[1].strides
    assert np.ascontiguousarray(out[0]).tobytes() == np.ascontiguousarray(out[1]).tobytes()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [*GEOMETRIES, "dilated", "stride-2"])
def test_conv_weight_paths_agree_bitwise(monkeypatch, name, dtype):
    xs, ws, geo = {
        **GEOMETRIES,
        "dilated": ((2, 3, 10, 11), (4, 3, 3, 2), ((1, 1), ((1, 1), (0, 1)), (2, 3), 1)),
        "stride-2": ((2, 3, 9, 8), (4, 3, 3, 3), ((2, 2), ((1, 1), (1, 1)), (1, 1), 1)),
    }[name]  # (stride 2: strided rows, NumPy's copy on both settings)
    rng = np.random.default_rng(2)
    x = rng.normal(size=xs).astype(dtype).transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)
    dy = rng.normal(size=conv2d(x, rng.normal(size=ws), None, *geo).shape).astype(dtype)
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        out.append(convolution.conv2d_weight(x, dy, *geo, ws[2:]))
    assert out[0].dtype == out[1].dtype == dtype and out[0].strides == out[1].strides
    assert out[0].tobytes() == out[1].tobytes()


@needs_numba
def test_the_kernels_write_every_entry():
    """Each kernel fills its whole output (NaN-filled first: nothing left over from memory)."""
    rng = np.random.default_rng(3)
    t = rng.normal(size=(2, 3, 4, 5))
    g = np.full((2, 3, 6, 7), np.nan)
    conv_kernels.GRID_PAD.compiled(t, g)
    expected = np.zeros_like(g)
    expected[:, :, :4, :5] = t
    np.testing.assert_array_equal(g, expected)
    cols, out = rng.normal(size=(2, 4, 10)), np.full((2, 13), np.nan)
    conv_kernels.COL2IM_FLAT.compiled(cols, np.array([0, 1, 2, 3]), out)
    expected = np.zeros_like(out)
    for k in range(4):
        expected[:, k : k + 10] += cols[:, k]
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    cols = np.full((2, 2, 3, 3, 2, 3), np.nan)  # (C, kh, kw, N, Ho, Wo) of t (C, N, 4, 5)
    conv_kernels.IM2COL_COMPACT.compiled(t.transpose(1, 0, 2, 3).copy(), cols, 1, 1)
    assert not np.isnan(cols).any()


@needs_numba
def test_the_kernels_run_when_numba_is_there(monkeypatch):
    calls = []
    for name in ("COL2IM_FLAT", "IM2COL_COMPACT", "GRID_PAD"):
        compiled = getattr(convolution, name).compiled

        def counting(*a, compiled=compiled, name=name):
            calls.append(name)
            return compiled(*a)

        fake = jit.Kernel(getattr(convolution, name).fn)
        fake.__dict__["compiled"] = counting  # a fresh object: no undo needed
        monkeypatch.setattr(convolution, name, fake)
    xs, ws, geo = GEOMETRIES["plain"]
    x, w = np.ones(xs), np.ones(ws)
    dy = np.ones((5, 3, 12, 11)).transpose(1, 0, 2, 3)  # channel-major, as a conv's output
    expected_on = ["GRID_PAD", "COL2IM_FLAT", "IM2COL_COMPACT"]
    for flag, expected in (("1", expected_on), ("0", [])):
        calls.clear()
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        conv_transpose2d(dy, w, None, *geo, xs[2:])
        convolution.conv2d_weight(x, dy, *geo, ws[2:])
        assert calls == expected
    calls.clear()
    monkeypatch.setenv("NNFLOW_NUMBA", "1")  # stride 2: compact columns, NumPy's strided adds
    conv_transpose2d(np.ones((3, 5, 6, 6)), w, None, (2, 2), geo[1], (1, 1), 1, xs[2:])
    convolution.conv2d_weight(x, np.ones((3, 5, 6, 6)), (2, 2), *geo[1:], ws[2:])
    assert calls == []


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
def test_conv_gradient_on_each_path(monkeypatch, flag):
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    xs, ws, geo = GEOMETRIES["asymmetric-dilated-groups"]
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])
    weights = rng.normal(size=conv2d(x, w, b, *geo).shape)
    ad.gradcheck(lambda x, w, b: np.sum(conv2d(x, w, b, *geo) * weights), x, w, b)


@needs_numba
def test_docstring_examples_run_compiled():
    result = doctest.testmod(conv_kernels)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_other_dtypes_take_the_numpy_path(monkeypatch, dtype):
    """Numba has no float16 arithmetic, and integers keep NumPy's rules: no kernel for them."""
    xs, ws, geo = GEOMETRIES["plain"]
    x, w = np.ones(xs, dtype), np.ones(ws, dtype)
    dy = np.ones((5, 3, 12, 11), dtype).transpose(1, 0, 2, 3)
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        dx = conv_transpose2d(dy, w, None, *geo, xs[2:])
        out.append((dx, convolution.conv2d_weight(x, dy, *geo, ws[2:])))
    for a, b in zip(*out, strict=True):
        assert a.dtype == b.dtype and a.strides == b.strides
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "case",
    [
        ((2, 3, 14, 13), (1, 1), 1),  # flat columns
        ((2, 3, 5, 5), (1, 1), 1),  # compact, stride 1 (the Numba im2col with a ones row)
        ((2, 3, 9, 8), (2, 2), 1),  # compact, strided (NumPy's copy)
        ((2, 4, 9, 8), (1, 1), 2),  # groups: the bias added after the GEMMs
    ],
)
def test_conv2d_bias_inside_the_gemm(monkeypatch, flag, dtype, case):
    """conv2d with a bias (added as one more GEMM column) equals conv2d without it plus the
    bias, in value and layout."""
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    xs, stride, groups = case
    rng = np.random.default_rng(6)
    x = rng.normal(size=xs).astype(dtype)
    w = rng.normal(size=(4, xs[1] // groups, 3, 3)).astype(dtype)
    b = rng.normal(size=4).astype(dtype)
    geo = (stride, ((1, 0), (0, 1)), (1, 1), groups)
    y = conv2d(x, w, b, *geo)
    plain = conv2d(x, w, None, *geo)
    assert y.dtype == dtype and y.strides == plain.strides
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, plain + b[:, None, None], rtol=tol, atol=tol)
