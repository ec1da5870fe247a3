"""NumPy's own BLAS matrix product, callable from the Numba kernels of :mod:`nnflow.jit`.

A recurrence runs one small GEMM and one short kernel per time step. Driven from Python, each
step pays ~5 us of interpreter and dispatch (``np.matmul`` with ``out=``, the kernel's
dispatcher, the slicing), and the caches go cold between the calls. With the GEMM callable from
compiled code a kernel runs every step in one call (the LSTM's forward: 4.6 -> 4.0 ms for 50
steps, batch 32, hidden 128, 2 cores).

The GEMM must be NumPy's **own** BLAS, the very library NumPy loaded: its thread pool is the
one NumPy's matrix products use. (Numba's ``np.dot`` calls SciPy's bundled BLAS, a second
OpenBLAS with a second thread pool; the two pools' idle threads spin against each other and
the LSTM step ran 1.8x *slower*.) NumPy's wheels bundle OpenBLAS built with 64-bit integers,
whose symbols are ``scipy_cblas_sgemm64_`` and ``scipy_cblas_dgemm64_``; :func:`gemm_address`
finds them in the library inside NumPy's install and checks them on a small product before
anything uses them. A NumPy built against another BLAS (conda's MKL, a distribution's
OpenBLAS) has no such library: :func:`gemm_address` answers ``None`` and the callers run their
Python loops, which compute the same values.

Numba's disk cache keys a kernel on its own source file: after editing this module, delete
the cached kernels that call it (``nnflow/layers/__pycache__/*_kernels.*.nb[ic]``), or
they keep the old code. (An installed release brings new files, so new cache keys.)

>>> import numpy as np
>>> a, b = np.arange(6.0).reshape(2, 3), np.ones((3, 2))
>>> out = np.empty((2, 2))
>>> address = gemm_address(np.float64)
>>> if address is not None:
...     matmul_into(address, a, b, out)
... else:
...     out[...] = a @ b
>>> out.tolist()
[[3.0, 3.0], [12.0, 12.0]]
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["gemm_address", "gemm_call", "matmul_into", "register_for_kernels"]

# (float32, float64) symbol names of CBLAS's ?gemm with 64-bit integers, in NumPy's wheels
_SYMBOLS = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_"))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enums
_C_FLOAT = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def _numpy_blas_libraries() -> list[str]:
    """The shared libraries bundled inside NumPy's install whose name says BLAS."""
    root = os.path.dirname(os.path.abspath(np.__file__))
    places = [os.path.join(root, "..", "numpy.libs"), os.path.join(root, ".dylibs")]
    found = []
    for place in places:
        for name in ("*openblas*.so*", "*openblas*.dylib", "*openblas*.dll"):
            found += sorted(glob.glob(os.path.join(place, name)))
    return found


def _prototype(dtype: np.dtype) -> Callable[[int], Any]:
    """The ctypes prototype of ``cblas_?gemm`` with 64-bit integers, for ``dtype``."""
    i32, i64, ptr, real = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, _C_FLOAT[dtype]
    return ctypes.CFUNCTYPE(
        None, i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64
    )


@functools.cache
def gemm_address(dtype: Any) -> int | None:
    """The address of NumPy's own ``cblas_?gemm`` for float32 or float64 ``dtype``, checked on a
    small product; ``None`` when NumPy bundles no BLAS whose symbols are known, when the check
    fails, or for another dtype.

    >>> address = gemm_address(np.float32)
    >>> address is None or address > 0
    True
    """
    dtype = np.dtype(dtype)
    if dtype not in _C_FLOAT:
        return None
    which = 0 if dtype == np.float32 else 1
    for path in _numpy_blas_libraries():
        try:
            library = ctypes.CDLL(path)  # already loaded by NumPy: the same library, no copy
        except OSError:
            continue
        for names in _SYMBOLS:
            symbol = getattr(library, names[which], None)
            if symbol is None:
                continue
            address = ctypes.cast(symbol, ctypes.c_void_p).value
            if address and _agrees_with_numpy(address, dtype):
                return address
    return None


def _agrees_with_numpy(address: int, dtype: np.dtype) -> bool:
    """Whether the GEMM at ``address`` computes a 3x4 @ 4x2 product, with either operand
    transposed and accumulated, as NumPy does."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4)).astype(dtype)
    b = rng.normal(size=(4, 2)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for left, right in ((a, b), (np.asfortranarray(a), np.asfortranarray(b))):
        out = np.ones((3, 2), dtype)
        matmul_into(address, left, right, out, accumulate=True)
        if not np.allclose(out, a @ b + 1, rtol=tol, atol=tol):
            return False
    return True


def gemm_call(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``c = alpha op(a) op(b) + beta c``, row-major, by the ``cblas_?gemm`` at ``address``
    (from :func:`gemm_address`); ``a``, ``b``, ``c`` are data addresses, ``alpha``/``beta``
    NumPy scalars of the arrays' dtype (which picks the prototype). In Python through ctypes;
    in a kernel (:func:`register_for_kernels`) a direct call.

    >>> a, out = np.eye(2), np.zeros((2, 2))
    >>> address = gemm_address(np.float64)
    >>> if address is not None:
    ...     one, zero = np.float64(1), np.float64(0)
    ...     gemm_call(address, 111, 111, 2, 2, 2, one, a.ctypes.data, 2, a.ctypes.data, 2,
    ...               zero, out.ctypes.data, 2)
    ...     assert out.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    """
    function = _prototype(np.dtype(type(alpha)))(address)
    function(_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


def _operand(x, size):
    """``(CBLAS transpose flag, leading dimension)`` of the 2-d operand ``x``: rows contiguous
    (no transpose) or columns contiguous (a transposed matrix). A dimension of length 1 has
    an arbitrary stride: BLAS gets the smallest valid leading dimension."""
    rows, cols = x.shape
    if x.strides[1] == size or cols == 1:
        return _NO_TRANS, x.strides[0] // size if rows > 1 else cols
    return _TRANS, x.strides[1] // size if cols > 1 else rows


def _strided(x, size):
    """Whether the 2-d ``x`` is a matrix BLAS can read: contiguous rows (or columns) that do
    not overlap, at positive strides."""
    rows, cols = x.shape
    if (x.strides[1] == size or cols == 1) and (rows == 1 or x.strides[0] >= cols * size):
        return True
    return (x.strides[0] == size or rows == 1) and (cols == 1 or x.strides[1] >= rows * size)


def matmul_into(address, a, b, out, accumulate=False):
    """``out[...] = a @ b`` (``out += a @ b`` with ``accumulate``) by the GEMM at ``address``:
    2-d arrays of one float dtype, ``out`` with contiguous rows, ``a`` and ``b`` each with
    contiguous rows or contiguous columns (a transposed matrix); a kernel calls this too.
    Shapes, item sizes and layouts are checked (``ValueError``): BLAS gets raw pointers.

    >>> a, out = np.arange(4.0).reshape(2, 2), np.ones((2, 2))
    >>> address = gemm_address(np.float64)
    >>> if address is not None:
    ...     matmul_into(address, a.T, np.eye(2), out, accumulate=True)  # out += a^T
    ...     assert out.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    """
    m, k = a.shape
    n = b.shape[1]
    size = a.itemsize
    if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("matmul_into: the shapes of a, b and out do not match")
    if b.itemsize != size or out.itemsize != size:
        raise ValueError("matmul_into: a, b and out must have one dtype")
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum (BLAS would reject the leading dimension 0)
        if not accumulate:
            out[:, :] = 0
        return
    if not (_strided(a, size) and _strided(b, size) and _strided(out, size)):
        raise ValueError("matmul_into: an array has neither contiguous rows nor columns")
    if out.strides[1] != size and n > 1:
        raise ValueError("matmul_into: out must have contiguous rows")
    trans_a, lda = _operand(a, size)
    trans_b, ldb = _operand(b, size)
    ldc = out.strides[0] // size if m > 1 else n
    one, beta = a.dtype.type(1), a.dtype.type(1 if accumulate else 0)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, out.ctypes.data
    gemm_call(address, trans_a, trans_b, m, n, k, one, pa, lda, pb, ldb, beta, pc, ldc)


@functools.cache
def register_for_kernels() -> None:
    """Teach Numba :func:`gemm_call` (an indirect call through the address, so kernels that
    use it keep Numba's disk cache: the address is an argument, not a constant) and
    :func:`matmul_into`. Called by :class:`nnflow.jit.Kernel` for kernels with ``blas=True``;
    needs Numba.

    >>> from nnflow import jit
    >>> register_for_kernels() if jit.numba_available() else None
    """
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload, register_jitable

    @intrinsic
    def _call(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if alpha not in (types.float32, types.float64) or beta != alpha:
            return None
        args = (address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        signature = types.void(*args)

        def codegen(context, builder, sig, values):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            real = ir.FloatType() if alpha == types.float32 else ir.DoubleType()
            pointer = ir.IntType(8).as_pointer()
            prototype = ir.FunctionType(
                ir.VoidType(),
                [i32, i32, i32, i64, i64, i64, real, pointer, i64, pointer, i64, real, pointer,
                 i64],
            )  # fmt: skip
            function = builder.inttoptr(values[0], prototype.as_pointer())

            def int_(position, width):
                value = context.cast(builder, values[position], sig.args[position], types.int64)
                return builder.trunc(value, i32) if width == 32 else value

            def data(position):
                value = context.cast(builder, values[position], sig.args[position], types.int64)
                return builder.inttoptr(value, pointer)

            builder.call(
                function,
                [ir.Constant(i32, _ROW_MAJOR), int_(1, 32), int_(2, 32), int_(3, 64),
                 int_(4, 64), int_(5, 64), values[6], data(7), int_(8, 64), data(9),
                 int_(10, 64), values[11], data(12), int_(13, 64)],
            )  # fmt: skip
            return context.get_dummy_value()

        return signature, codegen

    @overload(gemm_call)
    def _gemm_call(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        def impl(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            _call(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        return impl

    register_jitable(_operand)
    register_jitable(_strided)
    register_jitable(matmul_into)
