"""The GRU's one-call loops (nnflow.layers.gru_kernels) against its NumPy loops.

Both compute the same workspace and cotangents: float64's backward to the last bits or two
(the kernel repeats the NumPy loop's arithmetic in its order; BLAS accumulates the carried
gradient), float32's forward within a few ulps (its ``tanh`` is the rational approximation).
Each kernel must actually run, once per call, and never without NumPy's BLAS address.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from conftest import count_kernel_calls

from nnflow import blas, jit
from nnflow.layers import gru_kernels, gru_ops

pytestmark = pytest.mark.skipif(
    not jit.numba_available() or blas.gemm_address(np.float64) is None,
    reason="needs Numba and NumPy's bundled BLAS (see nnflow.blas)",
)


def _args(dtype, steps=6, n=3, inputs=4, hidden=5, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(steps, n, inputs), (n, hidden), (3 * hidden, inputs), (3 * hidden, hidden),
              (3 * hidden,), (3 * hidden,)]  # fmt: skip
    args = tuple(rng.normal(size=s).astype(dtype) for s in shapes)
    return args, rng.normal(size=(steps, n, hidden)).astype(dtype)


def _run(monkeypatch, flag, args, dy):
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    ws = gru_ops.gru_layer(*args)
    return ws, gru_ops.gru_layer_backward(dy, ws, *args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_and_numpy_loops_agree(monkeypatch, dtype):
    args, dy = _args(dtype)
    ws0, back0 = _run(monkeypatch, "0", args, dy)
    ws1, back1 = _run(monkeypatch, "1", args, dy)
    assert ws1.dtype == back1.dtype == dtype
    if dtype == np.float64:  # NumPy's forward either way; the backward in the kernel
        np.testing.assert_array_equal(ws1, ws0)
        np.testing.assert_allclose(back1, back0, rtol=1e-13, atol=1e-14)
    else:
        np.testing.assert_allclose(ws1, ws0, rtol=5e-5, atol=5e-6)
        np.testing.assert_allclose(back1, back0, rtol=5e-5, atol=5e-6)
    np.testing.assert_array_equal(back1[-1, 5:], 0)  # below h0's cotangent: zeros


@pytest.mark.parametrize("dtype, forward", [(np.float64, 0), (np.float32, 1)])
def test_each_kernel_runs_once_per_call(monkeypatch, dtype, forward):
    calls = count_kernel_calls(monkeypatch, gru_ops, ("GRU_FORWARD_F32", "GRU_BACKWARD_STEPS"))
    _run(monkeypatch, "1", *_args(dtype))
    assert calls == {"GRU_FORWARD_F32": forward, "GRU_BACKWARD_STEPS": 1}
    monkeypatch.setattr(gru_ops, "gemm_address", lambda dtype: None)  # no BLAS: NumPy loops
    _run(monkeypatch, "1", *_args(dtype))
    assert calls == {"GRU_FORWARD_F32": forward, "GRU_BACKWARD_STEPS": 1}


def test_docstring_example():
    result = doctest.testmod(gru_kernels)
    assert result.attempted > 0 and result.failed == 0
