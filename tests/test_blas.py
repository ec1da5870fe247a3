"""nnflow.blas: NumPy's own GEMM, found in NumPy's install and called from Python or kernels.

Where this NumPy bundles a BLAS nnflow.blas knows (NumPy's wheels do), the address must be
found and every call must match ``a @ b``; where it does not, ``gemm_address`` is ``None``,
which the tests below also check by hiding the library.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nnflow import blas, jit

needs_numba = pytest.mark.skipif(not jit.numba_available(), reason="numba is not installed")


def _address(dtype):
    address = blas.gemm_address(dtype)
    if address is None:
        pytest.skip("this NumPy bundles no BLAS that nnflow.blas knows")
    return address


def _operands(dtype, m=5, k=7, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)


def test_numpy_wheels_bundle_a_known_blas():
    """NumPy's Linux wheels bundle scipy-openblas with 64-bit integers: found, both dtypes."""
    info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if info.get("name") != "scipy-openblas" or not blas._numpy_blas_libraries():
        pytest.skip(f"NumPy built against {info.get('name')}, not its bundled OpenBLAS")
    assert blas.gemm_address(np.float32) and blas.gemm_address(np.float64)
    assert blas.gemm_address(np.float32) != blas.gemm_address(np.float64)


def test_other_dtypes_and_a_missing_library_give_none(monkeypatch):
    for dtype in (np.float16, np.int64, np.complex128):
        assert blas.gemm_address(dtype) is None
    monkeypatch.setattr(blas, "_numpy_blas_libraries", lambda: [])
    blas.gemm_address.cache_clear()
    try:
        assert blas.gemm_address(np.float32) is None
    finally:
        blas.gemm_address.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_into_from_python_matches_numpy(dtype):
    address = _address(dtype)
    a, b = _operands(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12}
    for left in (a, np.asfortranarray(a), np.asfortranarray(a.T).T):
        for right in (b, np.asfortranarray(b)):
            out = np.full((5, 3), np.nan, dtype)
            blas.matmul_into(address, left, right, out)
            np.testing.assert_allclose(out, a @ b, **tol)
            blas.matmul_into(address, left, right, out, accumulate=True)  # out += a @ b
            np.testing.assert_allclose(out, 2 * (a @ b), **tol)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_into_from_a_kernel_matches_numpy(dtype):
    """Compiled: contiguous, transposed and sliced operands (leading dimensions larger than
    the width), the output a row slice of a bigger array."""
    address = _address(dtype)

    kernel = jit.Kernel(_product, cache=False, blas=True).compiled
    a, b = _operands(dtype, m=6, k=4, n=5, seed=1)
    wide = np.zeros((6, 9), dtype)
    wide[:, 2:6] = a
    stacked = np.zeros((3, 8, 5), dtype)
    stacked[1, :4] = b
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12}
    pairs = ((a, b), (a.T.copy().T, b), (wide[:, 2:6], stacked[1, :4]), (a, b.T.copy().T))
    for left, right in pairs:
        big = np.full((2, 10, 5), np.nan, dtype)
        kernel(address, left, right, big[1, 2:8], False)
        np.testing.assert_allclose(big[1, 2:8], a @ b, **tol)
        assert np.isnan(big[0]).all() and np.isnan(big[1, :2]).all() and np.isnan(big[1, 8:]).all()
        kernel(address, left, right, big[1, 2:8], True)  # accumulates
        np.testing.assert_allclose(big[1, 2:8], 2 * (a @ b), **tol)


@pytest.mark.parametrize("shape", [(1, 4, 3), (4, 1, 3), (4, 3, 1), (1, 1, 1), (1, 4, 1)])
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_numba)])
def test_dimensions_of_length_one(shape, compiled):
    """A length-1 dimension's stride means nothing (a transposed column vector has strides
    (8, 8)): BLAS must still get valid leading dimensions, from Python and from a kernel."""
    address = _address(np.float64)
    m, k, n = shape
    a, b = _operands(np.float64, m, k, n, seed=2)
    run = blas.matmul_into
    if compiled:
        run = jit.Kernel(_product, cache=False, blas=True).compiled
    for left in (a, np.ascontiguousarray(a.T).T):
        for right in (b, np.ascontiguousarray(b.T).T):
            out = np.full((m, n), np.nan)
            run(address, left, right, out, False)
            np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def _product(address, a, b, out, accumulate):
    blas.matmul_into(address, a, b, out, accumulate)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_numba)])
def test_matmul_into_refuses_what_blas_cannot_take(compiled):
    """BLAS gets raw pointers: mismatched shapes, mixed dtypes and layouts with neither
    contiguous rows nor columns are refused before the call, from Python and from a kernel."""
    address = _address(np.float64)
    run = blas.matmul_into
    if compiled:
        run = jit.Kernel(_product, cache=False, blas=True).compiled
    a, b = _operands(np.float64, 4, 3, 2)
    out = np.zeros((4, 2))
    wrong = [
        (a, b[:2], out, "shapes"),
        (a, b, np.zeros((4, 3)), "shapes"),
        (a, b.astype(np.float32), out, "one dtype"),
        (a, b, np.zeros((4, 2), np.float32), "one dtype"),
        (np.zeros((4, 6))[:, ::2], b, out, "neither contiguous"),
        (a, b, np.zeros((4, 4))[:, ::2], "neither contiguous"),
        (a, b, np.zeros((2, 4)).T, "contiguous rows"),
    ]
    for left, right, target, message in wrong:
        with pytest.raises(ValueError, match=message):
            run(address, left, right, target, False)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_numba)])
def test_empty_products(compiled):
    """No rows or columns: nothing to write; an empty inner dimension: zeros (or out as it
    was, accumulating). BLAS itself rejects a leading dimension of 0."""
    address = _address(np.float64)
    run = blas.matmul_into
    if compiled:
        run = jit.Kernel(_product, cache=False, blas=True).compiled
    run(address, np.zeros((0, 3)), np.ones((3, 2)), np.zeros((0, 2)), False)
    run(address, np.ones((2, 3)), np.ones((3, 0)), np.zeros((2, 0)), False)
    out = np.full((2, 2), 7.0)
    run(address, np.ones((2, 0)), np.ones((0, 2)), out, True)
    assert out.tolist() == [[7.0, 7.0], [7.0, 7.0]]
    run(address, np.ones((2, 0)), np.ones((0, 2)), out, False)
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_docstring_examples():
    result = doctest.testmod(blas)
    assert result.attempted > 0 and result.failed == 0
