"""``relu`` and ``relu_grad``: their Numba kernels (nnflow/relu_kernels.py) against NumPy.

Both paths must agree bitwise (``-0.0`` to ``+0.0``, NaN kept, signed zeros of the gradient)
and lay their outputs out alike, for ``out=None``, a buffer and in place, in float32 and
float64, for C-contiguous and channel-major arrays; arrays the kernels do not take (strided,
mismatched layouts) run NumPy on both settings. The Numba half is skipped only where Numba
is missing.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nnflow import ad, functional, jit, relu_kernels
from nnflow.functional import relu, relu_grad

needs_numba = pytest.mark.skipif(
    not jit.numba_available(), reason="numba is not installed (pip install 'nnflow[fast]')"
)

LAYOUTS = ["c", "channel-major", "cropped", "strided"]


def _array(dtype, layout, seed=0, shape=(3, 4, 5, 6)):
    """Integer-valued entries with zeros, ``-0.0``, NaN and infinities among them."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-3, 4, size=shape).astype(dtype)
    special = np.array([-0.0, np.nan, np.inf, -np.inf], dtype)
    a.flat[rng.choice(a.size, 12, replace=False)] = np.resize(special, 12)
    if layout == "channel-major":
        return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    if layout == "cropped":  # as a convolution's output: channel-major, cut from a grid
        big = np.zeros((shape[1], shape[0], shape[2] + 2, shape[3] + 3), dtype)
        big[:, :, : shape[2], : shape[3]] = a.transpose(1, 0, 2, 3)
        return big[:, :, : shape[2], : shape[3]].transpose(1, 0, 2, 3)
    if layout == "strided":  # the innermost axis not contiguous: NumPy on both settings
        return np.repeat(a, 2, axis=3)[..., ::2]
    return a


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _on(monkeypatch, flag, fn):
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    return fn()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dest", ["new", "buffer", "inplace"])
def test_relu_paths_agree_bitwise(monkeypatch, dtype, layout, dest):
    results = []
    for flag in ("0", "1"):
        x = _array(dtype, layout)
        out = {"new": None, "buffer": np.empty_like(x), "inplace": x}[dest]
        y = _on(monkeypatch, flag, lambda x=x, out=out: relu(x, out))
        assert out is None or y is out
        results.append(y)
    _same(results[1], results[0])
    assert not np.signbit(results[0][~np.isnan(results[0])]).any()  # -0.0 became +0.0


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, on both paths
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dest", ["new", "buffer", "over-dy", "over-y"])
def test_relu_grad_paths_agree_bitwise(monkeypatch, dtype, layout, dest):
    results = []
    for flag in ("0", "1"):
        dy, y = _array(dtype, layout, seed=1), _array(dtype, layout, seed=2)
        out = {"new": None, "buffer": np.empty_like(dy), "over-dy": dy, "over-y": y}[dest]
        g = _on(monkeypatch, flag, lambda dy=dy, y=y, out=out: relu_grad(dy, y, out))
        assert out is None or g is out
        results.append(g)
    _same(results[1], results[0])
    assert np.signbit(results[0]).any()  # negative dy times 0: -0.0, as NumPy gives


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_mismatched_layouts_take_numpy_and_agree(monkeypatch):
    dy = _array(np.float32, "c", seed=1)
    y = _array(np.float32, "channel-major", seed=2)
    a, b = (_on(monkeypatch, f, lambda: relu_grad(dy, y)) for f in ("0", "1"))
    _same(b, a)
    out = np.empty(dy.shape, np.float64)  # another dtype: NumPy casts
    a, b = (_on(monkeypatch, f, lambda: relu(dy, out).copy()) for f in ("0", "1"))
    _same(b, a)


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_the_kernels_run_when_numba_is_there(monkeypatch):
    calls = []
    for name in ("RELU_FORWARD", "RELU_BACKWARD"):
        kernel = getattr(functional, name)
        compiled = kernel.compiled

        def counting(*a, compiled=compiled, name=name):
            calls.append(name)
            return compiled(*a)

        fake = jit.Kernel(kernel.fn)
        fake.__dict__["compiled"] = counting  # a fresh object: no undo needed
        monkeypatch.setattr(functional, name, fake)
    for layout in ("c", "channel-major", "cropped"):  # dense runs and rows with gaps
        x = _array(np.float32, layout)
        for flag, expected in (("1", ["RELU_FORWARD", "RELU_BACKWARD"]), ("0", [])):
            calls.clear()
            monkeypatch.setenv("NNFLOW_NUMBA", flag)
            relu(x)
            relu_grad(x, x)
            assert calls == expected, layout
    monkeypatch.setenv("NNFLOW_NUMBA", "1")
    calls.clear()
    x = _array(np.float32, "strided")  # the innermost axis not contiguous: NumPy
    relu_grad(x, x)
    relu(x)
    assert calls == []


def test_dense_runs_are_views_in_memory_order():
    """A dense array of any axis order is handed to the kernel as a 1-d view of its memory."""
    x = _array(np.float64, "channel-major")
    bufs, shape, _ = functional._dense_run(x, x)
    assert shape == (1, 1, x.size) and np.shares_memory(bufs[0], x)
    assert bufs[0].tobytes() == np.ascontiguousarray(x.transpose(1, 0, 2, 3)).tobytes()
    assert functional._dense_run(x, np.ascontiguousarray(x)) is None  # orders differ
    assert functional._dense_run(_array(np.float64, "cropped")) is None  # gaps


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
def test_relu_gradients_on_each_path(monkeypatch, flag):
    """First and second order through relu and relu_grad, by finite differences."""
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (4, 3, 5)).transpose(1, 0, 2)
    x += np.where(x >= 0, 0.05, -0.05)  # away from the kink
    w = rng.normal(size=x.shape)
    ad.gradcheck(lambda x: np.sum(relu(x) ** 2 * w), x)
    ad.gradcheck(lambda x: np.sum(ad.grad(lambda x: np.sum(relu(x) ** 3), x)[1][0] * w), x)


def test_compiled_step_uses_relu_grad_on_numpy():
    """A compiled step calls relu_grad (writing into a planned buffer or in place)."""

    def loss(x):
        return np.sum(relu(x * 2.0) ** 2)

    x = np.random.default_rng(4).normal(size=(8, 9))
    step = ad.compile_grad(loss)
    assert "relu_grad(" in step.source(x)
    np.testing.assert_array_equal(step(x)[1][0], ad.grad(loss, x)[1][0])
    np.testing.assert_array_equal(ad.grad(loss, x)[1][0], 8 * x * (x > 0))


@needs_numba
def test_docstring_examples_run_compiled():
    for module in (relu_kernels, functional):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_other_dtypes_take_the_numpy_path(monkeypatch, dtype):
    """Numba has no float16 arithmetic, and integers keep NumPy's rules: no kernel for them."""
    x = np.arange(-6, 6).reshape(3, 4).astype(dtype)
    a, b = (_on(monkeypatch, f, lambda: relu_grad(x, relu(x))) for f in ("0", "1"))
    _same(b, a)


def _odd_arrays():
    rng = np.random.default_rng(7)
    readonly = rng.normal(size=(4, 5, 6))
    readonly.flags.writeable = False
    return {
        "broadcast-outer": np.broadcast_to(rng.normal(size=(1, 5, 6)), (4, 5, 6)),
        "broadcast-middle": np.broadcast_to(rng.normal(size=(4, 1, 6)), (4, 5, 6)),
        "broadcast-inner": np.broadcast_to(rng.normal(size=(4, 5, 1)), (4, 5, 6)),
        "read-only": readonly,
        "reversed": rng.normal(size=(4, 5, 6))[::-1],
        "transposed": rng.normal(size=(5, 4, 6)).transpose(1, 0, 2),
        "cropped": rng.normal(size=(4, 5, 8))[:, :, :6],
    }


@needs_numba
@pytest.mark.parametrize("name", list(_odd_arrays()))
def test_odd_layouts_agree_with_numpy(monkeypatch, name):
    """Broadcast, read-only, reversed and mixed layouts: the same values and output layout as
    NumPy's (the kernels take what they can, NumPy the rest)."""
    x, ones = _odd_arrays()[name], np.ones((4, 5, 6))
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        results.append(
            [relu(x), relu(x, np.empty((4, 5, 6))), relu_grad(ones, x), relu_grad(x, ones),
             relu_grad(x, x)]
        )  # fmt: skip
    for a, b in zip(*results, strict=True):
        _same(b, a)


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_outputs_overlapping_an_input_elsewhere_agree_with_numpy(monkeypatch):
    """``out`` shifted against an input (not the same memory): NumPy's buffered result on both
    settings (the kernels' element loop would read what it already wrote)."""
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NNFLOW_NUMBA", flag)
        buf = np.linspace(-2, 2, 41)
        relu(buf[:-1], buf[1:])
        grad = np.linspace(-1, 3, 41)
        relu_grad(grad[1:], grad[:-1], grad[:-1])
        results.append((buf, grad))
    for a, b in zip(*results, strict=True):
        _same(b, a)


def test_alias_tells_in_place_from_overlap():
    a = np.zeros((4, 5))
    assert functional._alias(None, a) == 0 and functional._alias(np.zeros(3), a) == 0
    assert functional._alias(a, np.ones(3), a) == 2 and functional._alias(a[:], a) == 1
    assert functional._alias(a[1:], a[:-1]) is None and functional._alias(a.T, a) is None
