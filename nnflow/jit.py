"""Optional CPU kernels compiled by Numba: the CPU counterpart of the GPU's kernel fusion.

NumPy runs one ufunc call per operation. For arrays of a few thousand entries (an LSTM's
gates for one time step, batch 32, hidden 128) a call costs more in dispatch and in memory
passes than in arithmetic: one step of the LSTM's backward pass is ~15 such calls. On the GPU
the compiled tape fuses such chains into CuPy ``ElementwiseKernel``s; on the CPU a handful of
hot loops are also written as plain Python loops over scalars that Numba compiles (one pass,
no temporaries), and the primitives call them when they can:

- Numba is **optional** (``pip install 'nnflow[fast]'``). Without it every primitive runs its
  NumPy formulation, which computes the same values (the tests run both and compare them).
- ``NNFLOW_NUMBA=0`` in the environment turns the kernels off, read at each call (for
  comparisons, and for the tests of the NumPy path).
- Only NumPy arrays of float32 or float64 go to a kernel; CuPy arrays, float16 (Numba has no
  float16 arithmetic), integers, complex and anything else take the array-module path.
- The kernels compile on first use per dtype signature (about a second each) and are cached on
  disk by Numba (``cache=True``: ``__pycache__`` beside this package, or Numba's user cache).

Why Numba and not a C extension: it is the well-kept, widely installed library for exactly
this (compiled loops over NumPy arrays), has wheels for every platform NumPy has, and keeps
nnflow a pure-Python package with nothing to build. Transcendental functions stay in NumPy
(its ``tanh``/``exp`` are SIMD-vectorised; Numba's scalar calls into libm are ~10x slower), so
a kernel fuses the arithmetic between them.

>>> def axpy(a, x, y):  # y += a * x, over a 1-d array
...     for i in range(x.shape[0]):
...         y[i] += a * x[i]
>>> AXPY = Kernel(axpy, cache=False)  # a function with no source file: no disk cache
>>> y = np.zeros(3)
>>> (AXPY.get(y) or axpy)(2.0, np.ones(3), y)
>>> y.tolist()
[2.0, 2.0, 2.0]
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["Kernel", "numba_available", "enabled", "flat_views"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes the kernels compute in


@functools.cache
def _load_numba() -> ModuleType | None:
    """Import Numba once (``None`` when it is not installed or cannot load)."""
    try:
        import numba
    except Exception:  # not installed, or an incompatible build: the NumPy path runs
        return None
    return numba


def numba_available() -> bool:
    """Whether Numba can be imported (whatever ``NNFLOW_NUMBA`` says).

    >>> isinstance(numba_available(), bool)
    True
    """
    return _load_numba() is not None


def enabled() -> bool:
    """Whether the kernels run now: Numba is importable and ``NNFLOW_NUMBA`` is not ``"0"``.

    >>> isinstance(enabled(), bool)
    True
    """
    return os.environ.get("NNFLOW_NUMBA", "1") != "0" and numba_available()


@functools.cache
def _jitable(fn: Callable[..., Any]) -> None:
    """Let Numba compile calls to the plain function ``fn`` from kernels (once per function;
    ``fn`` itself stays a Python function)."""
    _load_numba().extending.register_jitable(error_model="numpy")(fn)


class Kernel:
    """A Python loop function compiled by Numba on first use (``njit``, ``cache=True``).

    ``kernel.get(*arrays)`` is the compiled function when the kernels are :func:`enabled` and
    every array given is a float32 or float64 NumPy array, else ``None`` (the caller runs its
    NumPy path).

    >>> Kernel(lambda x: x).get([1.0]) is None  # not a NumPy array
    True
    >>> Kernel(lambda x: x).get(np.zeros(2, np.float16)) is None  # no float16 in Numba
    True
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        cache: bool = True,
        helpers: tuple[Callable, ...] = (),
        fastmath: frozenset[str] = frozenset(),
        blas: bool = False,
    ):
        self.fn, self.cache, self.helpers, self.fastmath = fn, cache, helpers, set(fastmath)
        self.blas = blas  # calls nnflow.blas.matmul_into (the caller passes gemm_address)
        self.__doc__ = fn.__doc__

    @functools.cached_property
    def compiled(self) -> Callable[..., Any]:
        """The Numba-compiled function (compiled per signature on its first call); the
        ``helpers`` it calls (plain functions of its module) compile along with it, and
        ``fastmath`` lists LLVM's fast-math flags it may use (``{"reassoc"}`` lets a sum
        vectorise); with ``blas`` it may call :func:`nnflow.blas.matmul_into`."""
        numba = _load_numba()
        if self.blas:
            from .blas import register_for_kernels

            register_for_kernels()
        for helper in self.helpers:
            _jitable(helper)
        # NumPy's error model: float division gives inf/NaN, not ZeroDivisionError (as the
        # NumPy paths do), and without that check a loop with a division vectorises
        options = {"fastmath": self.fastmath} if self.fastmath else {}
        return numba.njit(cache=self.cache, nogil=True, error_model="numpy", **options)(self.fn)

    def get(self, *arrays: Any) -> Callable[..., Any] | None:
        """The compiled kernel if it may run on these arrays, else ``None``."""
        if not enabled() or any(
            type(a) is not np.ndarray or a.dtype not in _FLOATS for a in arrays
        ):
            return None
        return self.compiled


def flat_views(*arrays: np.ndarray) -> list[np.ndarray] | None:
    """Each array as a 1-d view of its memory in memory order, when all have one shape, dtype
    and strides and fill their memory without gaps (C- or F-contiguous, or dense in any other
    axis order, such as a channel-major ``(N, C, H, W)``); else ``None``. Entry ``k`` of every
    view is then the same element of every array: what an elementwise kernel loops over, in
    ~1 us.

    >>> x = np.arange(6.0).reshape(2, 3).T  # F-ordered
    >>> flat_views(x, np.zeros((3, 2), order="F"))[0].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    >>> flat_views(x, np.zeros((3, 2))) is None  # another layout
    True
    """
    first = arrays[0]
    if first.size == 0 or any(
        a.strides != first.strides or a.shape != first.shape or a.dtype != first.dtype
        for a in arrays
    ):
        return None
    if not (first.flags.c_contiguous or first.flags.f_contiguous):
        inner = first.itemsize  # dense in some axis order: strides sorted are the products
        for stride, n in sorted(zip(first.strides, first.shape, strict=True)):
            if n > 1 and stride != inner:
                return None
            inner *= n
    return [a.ravel(order="K") for a in arrays]  # views: dense, positive strides
