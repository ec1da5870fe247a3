"""Max pooling's Numba kernels (nnflow/layers/pool_kernels.py) against its NumPy path.

``max_pool2d`` and ``max_pool2d_scatter`` run either their NumPy formulation
(``NNFLOW_NUMBA=0``) or, with Numba, one kernel pass; the kernels repeat the NumPy arithmetic
term for term, so both paths must agree *bitwise* (values, signed zeros, NaN) and lay out their
outputs alike, on inputs full of ties (integer-valued floats after a relu: all-zero windows),
in float32 and float64, for NCHW and channel-major inputs. The NumPy half always runs; the
Numba half is skipped, saying so, only where Numba is missing.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nnflow import ad, jit
from nnflow.ad.rules import rule_cases
from nnflow.layers import MaxPool2d, pool_kernels, pooling_ops
from nnflow.layers.pooling_ops import max_pool2d, max_pool2d_scatter

needs_numba = pytest.mark.skipif(
    not jit.numba_available(), reason="numba is not installed (pip install 'nnflow[fast]')"
)

GEOMETRIES = {  # kernel, stride, padding; and an input size (H, W)
    "2x2-tiles": (((2, 2), (2, 2), (0, 0)), (8, 6)),
    "2x2-odd": (((2, 2), (2, 2), (0, 0)), (7, 5)),  # stride = kernel, not tiling
    "3x3-tiles": (((3, 3), (3, 3), (0, 0)), (6, 9)),
    "3x3-overlap": (((3, 3), (2, 2), (0, 0)), (7, 8)),
    "2x3-uneven": (((2, 3), (1, 2), (0, 0)), (6, 7)),
    "1x1": (((1, 1), (1, 1), (0, 0)), (3, 4)),
    "padded": (((3, 3), (2, 2), (1, 1)), (5, 6)),  # the NumPy path on both settings
}


def _input(shape, dtype, layout, seed=0):
    """Integer-valued entries after a relu (ties everywhere, many all-zero windows), some
    ``-0.0`` among them, laid out NCHW or channel-major."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.integers(-3, 3, size=shape), 0).astype(dtype)
    x[rng.random(shape) < 0.1] = -0.0
    if layout == "channel-major":
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return x


def _both(monkeypatch, fn, *args):
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        out.append(fn(*args))
    return out


def _assert_same(a, b):
    """Equal bit for bit, with the same strides (the same memory layout)."""
    assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channel-major"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_kernels_and_numpy_path_agree_bitwise(monkeypatch, name, layout, dtype):
    geo, size = GEOMETRIES[name]
    x = _input((3, 4, *size), dtype, layout)
    y0, y1 = _both(monkeypatch, max_pool2d, x, *geo)
    _assert_same(y1, y0)
    assert (y0 == 0).any()  # there are all-zero windows (ties) to route
    # dy with zeros and negatives: the non-winners get signed zeros, as in the NumPy path
    dy = np.random.default_rng(1).integers(-3, 4, size=y0.shape).astype(dtype) * dtype(0.5)
    for dy_ in (dy, np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)):
        dx0, dx1 = _both(monkeypatch, max_pool2d_scatter, dy_, x, y0, *geo)
        _assert_same(dx1, dx0)
        assert dx0.sum() == dy_.sum()  # each dy went to one entry (integer-valued: exact)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channel-major"])
def test_every_2x2_window_of_signed_zeros_agrees(monkeypatch, layout, dtype):
    """All 256 windows over {-1, -0, 0, 1}: np.maximum keeps the later of two equal values
    (-0.0 or 0.0), and the kernel must pick the same one at every step of the chain."""
    values = np.array([-1.0, -0.0, 0.0, 1.0], dtype)
    windows = np.stack(np.meshgrid(*[values] * 4, indexing="ij"), -1).reshape(2, 128, 2, 2)
    x = windows if layout == "nchw" else windows.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)
    y0, y1 = _both(monkeypatch, max_pool2d, x, (2, 2), (2, 2), (0, 0))
    _assert_same(y1, y0)
    assert np.signbit(y0).any() and (y0 == 0).any()
    dy = np.resize(np.array([1.0, -1.0, 0.0, -0.0], dtype), y0.shape)
    dx0, dx1 = _both(monkeypatch, max_pool2d_scatter, dy, x, y0, (2, 2), (2, 2), (0, 0))
    _assert_same(dx1, dx0)


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, on both paths
@pytest.mark.parametrize("name", ["2x2-tiles", "3x3-overlap"])
def test_nan_and_infinite_values_agree(monkeypatch, name):
    geo, size = GEOMETRIES[name]
    x = _input((2, 3, *size), np.float64, "channel-major")
    x[0, 0, 0, 0], x[1, 2, 1, 1] = np.nan, -np.inf
    y0, y1 = _both(monkeypatch, max_pool2d, x, *geo)
    _assert_same(y1, y0)
    assert np.isnan(y0).any()
    dy = np.random.default_rng(2).normal(size=y0.shape)
    dy[0, 1, 0, 0], dy[1, 0, 0, 0] = np.inf, np.nan
    dx0, dx1 = _both(monkeypatch, max_pool2d_scatter, dy, x, y0, *geo)
    _assert_same(dx1, dx0)


def test_first_maximum_wins_on_both_paths(monkeypatch):
    """PyTorch's rule for ties: the first maximal entry of a window, row-major, takes dy."""
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 2:] = 5.0  # window 0 all zeros, window 1 ties at (1, 0) and (1, 1)
    flags = ["0", "1"] if jit.numba_available() else ["0"]
    for flag in flags:
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        y = max_pool2d(x, (2, 2), (2, 2), (0, 0))
        dx = max_pool2d_scatter(np.array([[[[1.0, 2.0]]]]), x, y, (2, 2), (2, 2), (0, 0))
        assert dx[0, 0].tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]


@needs_numba
def test_the_kernels_write_every_entry(monkeypatch):
    """Outputs NaN-filled first: each kernel writes every entry (nothing from memory)."""
    monkeypatch.setenv("NNFLOW_NUMBA", "0")
    x = _input((2, 3, 6, 6), np.float64, "nchw")
    for geo in (((2, 2), (2, 2), (0, 0)), ((3, 3), (3, 3), (0, 0))):  # both tile x
        y = max_pool2d(x, *geo)
        dy = np.random.default_rng(5).normal(size=y.shape)
        dx = max_pool2d_scatter(dy, x, y, *geo)
        got = np.full_like(dx, np.nan)
        if geo[0] == (2, 2):
            y_ = np.full_like(y, np.nan)
            pool_kernels.MAX_POOL_2X2.compiled(x, y_)
            _assert_same(y_, y)
            pool_kernels.MAX_POOL_SCATTER_2X2.compiled(dy, x, y, got, 0.0, 1.0)
        else:
            pool_kernels.MAX_POOL_SCATTER.compiled(dy, x, y, got, 3, 3, 3, 3, True, 0.0, 1.0)
        _assert_same(got, dx)


@needs_numba
def test_the_kernels_run_when_numba_is_there(monkeypatch):
    """2x2 tiling windows take the 2x2 kernels; other unpadded geometries the general
    scatter; padded ones (and Numba off) the NumPy path."""
    calls = []
    for name in ("MAX_POOL_2X2", "MAX_POOL_SCATTER_2X2", "MAX_POOL_SCATTER"):
        kernel = getattr(pooling_ops, name)
        compiled = kernel.compiled

        def counting(*a, compiled=compiled, name=name):
            calls.append(name)
            return compiled(*a)

        fake = jit.Kernel(kernel.fn)  # its switch and checks, calls counted
        fake.__dict__["compiled"] = counting  # (a fresh object: no undo needed)
        monkeypatch.setattr(pooling_ops, name, fake)
    monkeypatch.setenv("NNFLOW_NUMBA", "1")
    for name, expected in (
        ("2x2-tiles", ["MAX_POOL_2X2", "MAX_POOL_SCATTER_2X2"]),
        ("3x3-overlap", ["MAX_POOL_SCATTER"]),
        ("padded", []),
    ):
        calls.clear()
        geo, size = GEOMETRIES[name]
        x = _input((2, 3, *size), np.float32, "channel-major")
        y = max_pool2d(x, *geo)
        max_pool2d_scatter(np.ones_like(y), x, y, *geo)
        assert calls == expected, name
    calls.clear()
    monkeypatch.setenv("NNFLOW_NUMBA", "0")
    geo, size = GEOMETRIES["2x2-tiles"]
    x = _input((2, 3, *size), np.float32, "nchw")
    y = max_pool2d(x, *geo)
    max_pool2d_scatter(np.ones_like(y), x, y, *geo)
    assert calls == []


_POOL_CASES = [
    c
    for c in rule_cases()
    if c.fn
    in (pooling_ops.max_pool2d, pooling_ops.max_pool2d_scatter, pooling_ops.max_pool2d_gather)
]


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
@pytest.mark.parametrize("case", _POOL_CASES, ids=[c.label for c in _POOL_CASES])
def test_registry_cases_on_each_path(monkeypatch, flag, case):
    """The pooling primitives' registry cases, gradchecked with the kernels on and off."""
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    w = np.random.default_rng(7).uniform(0.5, 1.5, np.shape(case.call(*case.args)))
    ad.gradcheck(lambda *a: np.sum(case.call(*a) * w), *case.args, eps=case.eps,
                 atol=case.atol, rtol=case.rtol)  # fmt: skip


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
def test_layer_gradient_after_conv_layout_on_each_path(monkeypatch, flag):
    """MaxPool2d on a channel-major input (as after a convolution), by finite differences."""
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    x = np.random.default_rng(3).normal(size=(3, 2, 6, 4)).transpose(1, 0, 2, 3)
    pool = MaxPool2d(2)

    def loss(x):
        return np.sum(pool(x) * np.linspace(-1, 1, 2))

    ad.gradcheck(loss, x)


@needs_numba
def test_docstring_examples_run_compiled():
    for module in (pool_kernels, pooling_ops):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_other_dtypes_take_the_numpy_path(monkeypatch, dtype):
    """Numba has no float16 arithmetic, and integers keep NumPy's rules: no kernel for them."""
    x = _input((2, 3, 4, 6), dtype, "channel-major")
    for geo in (((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (0, 0))):
        y0, y1 = _both(monkeypatch, max_pool2d, x, *geo)
        _assert_same(y1, y0)
        dx0, dx1 = _both(monkeypatch, max_pool2d_scatter, np.ones_like(y0), x, y0, *geo)
        _assert_same(dx1, dx0)
