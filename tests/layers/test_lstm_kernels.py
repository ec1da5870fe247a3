"""The optional Numba kernels (nnflow.jit) and the LSTM's use of them.

The LSTM primitives run either their NumPy formulation or, with Numba, one kernel per time
step for the gate arithmetic; both must give the same values (the kernels follow the NumPy
formulas term for term, so float64 agrees to the last bits and float32 to an ulp or two), the
same layout, and the same gradients. The NumPy half of each comparison always runs; the Numba
half needs Numba (in the ``test`` extra), and is skipped, saying so, only where it is missing.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from conftest import count_kernel_calls

from nnflow import ad, blas, jit
from nnflow.layers import LSTM, lstm_kernels, recurrence_ops

needs_numba = pytest.mark.skipif(
    not jit.numba_available(), reason="numba is not installed (pip install 'nnflow[fast]')"
)


def _args(steps=5, n=3, inputs=4, hidden=6, dtype=np.float64, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(steps, n, inputs), (n, hidden), (n, hidden), (4 * hidden, inputs),
              (4 * hidden, hidden), (4 * hidden,)]  # fmt: skip
    args = [rng.normal(size=s).astype(dtype) for s in shapes]
    if not bias:
        args[-1] = None
    dy = rng.normal(size=(steps + 1, n, hidden)).astype(dtype)
    return tuple(args), dy


def _run(monkeypatch, flag, args, dy):
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    ws = recurrence_ops.lstm_layer(*args)
    return ws, recurrence_ops.lstm_layer_backward(dy, ws, *args)


def test_numba_switch_reads_the_environment_at_each_call(monkeypatch):
    kernel = jit.Kernel(lambda a: a)
    monkeypatch.setenv("NNFLOW_NUMBA", "0")
    assert not jit.enabled()
    assert kernel.get(np.zeros(2)) is None
    monkeypatch.setenv("NNFLOW_NUMBA", "1")
    assert jit.enabled() == jit.numba_available()
    assert kernel.get([0.0]) is None  # not a NumPy array: never to a kernel
    for dtype in (np.float16, np.int64, np.complex128):  # what Numba's kernels do not compute in
        assert kernel.get(np.zeros(2, dtype)) is None
    assert (kernel.get(np.zeros(2)) is not None) == jit.numba_available()
    assert (kernel.get(np.zeros(2, np.float32)) is not None) == jit.numba_available()


def test_float16_lstm_runs_on_numpy_and_matches_float64():
    args, dy = _args(steps=3, n=2, inputs=3, hidden=4)
    ws64 = recurrence_ops.lstm_layer(*args)
    half = tuple(a.astype(np.float16) for a in args)
    ws16 = recurrence_ops.lstm_layer(*half)
    packed16 = recurrence_ops.lstm_layer_backward(dy.astype(np.float16), ws16, *half)
    assert ws16.dtype == packed16.dtype == np.float16
    np.testing.assert_allclose(ws16, ws64, rtol=2e-2, atol=2e-2)
    packed64 = recurrence_ops.lstm_layer_backward(dy, ws64, *args)
    np.testing.assert_allclose(packed16, packed64, rtol=5e-2, atol=5e-2)


@needs_numba
def test_docstring_examples_run_compiled():
    for module in (jit, lstm_kernels):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_kernels_and_numpy_path_agree(monkeypatch, dtype, bias):
    args, dy = _args(dtype=dtype, bias=bias)
    ws0, packed0 = _run(monkeypatch, "0", args, dy)
    ws1, packed1 = _run(monkeypatch, "1", args, dy)
    assert ws1.dtype == ws0.dtype == dtype and packed1.dtype == dtype
    # T + 1 blocks, then ceil(K / N) = ceil(11 / 3) of the weight gradient; 4H rows, N columns
    assert packed1.shape == packed0.shape == (5 + 1 + 4, 4 * 6, 3)
    tol = {"rtol": 1e-13, "atol": 1e-14} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(ws1, ws0, **tol)
    np.testing.assert_allclose(packed1, packed0, **tol)


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
def test_each_path_matches_the_traced_reference(monkeypatch, flag):
    """The output's layout (gate cotangents, c0's, the weight gradient) of either path is the
    traced reference's, value for value."""
    args, dy = _args(steps=4, n=2, inputs=3, hidden=5)
    ws, packed = _run(monkeypatch, flag, args, dy)
    np.testing.assert_allclose(ws, recurrence_ops._reference_workspace(*args), rtol=1e-13)
    np.testing.assert_allclose(
        packed, recurrence_ops._reference_backward(dy, *args), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("flag", ["0", pytest.param("1", marks=needs_numba)])
def test_layer_gradients_by_finite_differences_on_each_path(monkeypatch, flag):
    monkeypatch.setenv("NNFLOW_NUMBA", flag)
    lstm = LSTM(3, 4, rng=0, dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(2, 5, 3))
    h0 = np.random.default_rng(2).normal(size=(1, 2, 4))
    c0 = np.random.default_rng(3).normal(size=(1, 2, 4))

    def loss(m, x, h0, c0):
        out, (h, c) = m(x, (h0, c0))
        return np.sum(out * np.linspace(-1, 1, 4)) + np.sum(np.sin(c))

    ad.gradcheck(loss, lstm, x, h0, c0)


_KERNELS = ("GATES_FORWARD", "STEP_FORWARD_F32", "FORWARD_F32", "GATES_BACKWARD",
            "BACKWARD_STEPS")  # fmt: skip


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_loop_kernels_run_when_numpy_blas_is_reachable(monkeypatch, dtype):
    """With NumPy's BLAS callable from kernels (nnflow.blas), the float32 forward and the
    backward of any float dtype are one kernel call each, GEMMs included; float64's forward
    loops in Python over the gate kernel (its tanh is NumPy's)."""
    if blas.gemm_address(dtype) is None:
        pytest.skip("this NumPy bundles no BLAS that nnflow.blas knows (see its docstring)")
    calls = count_kernel_calls(monkeypatch, recurrence_ops, _KERNELS)
    args, dy = _args(steps=7, dtype=dtype)
    _run(monkeypatch, "1", args, dy.astype(dtype))
    forward = {"FORWARD_F32": 1} if dtype == np.float32 else {"GATES_FORWARD": 7}
    assert calls == {**dict.fromkeys(_KERNELS, 0), **forward, "BACKWARD_STEPS": 1}


@needs_numba
@pytest.mark.parametrize(
    "dtype, forward", [(np.float64, "GATES_FORWARD"), (np.float32, "STEP_FORWARD_F32")]
)
def test_the_step_kernels_run_without_numpy_blas(monkeypatch, dtype, forward):
    """Without NumPy's BLAS address the loops stay in Python and call the step kernels (once
    per step): float32 the whole forward step after the GEMM, float64 the gate arithmetic."""
    monkeypatch.setattr(recurrence_ops, "gemm_address", lambda dtype: None)
    calls = count_kernel_calls(monkeypatch, recurrence_ops, _KERNELS)
    args, dy = _args(steps=7, dtype=dtype)
    _run(monkeypatch, "1", args, dy.astype(dtype))
    assert calls == {**dict.fromkeys(_KERNELS, 0), forward: 7, "GATES_BACKWARD": 7}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loop_kernels_and_step_kernels_agree(monkeypatch, dtype):
    """The one-call loops (BLAS from the kernel) and the Python loops over the step kernels
    compute the same workspace and gate cotangents, bit for bit (the same BLAS, the same
    kernels); the weight gradient, summed step by step instead of by one GEMM, to rounding."""
    args, dy = _args(steps=6, n=3, inputs=4, hidden=5, dtype=dtype, seed=4)
    dy = dy.astype(dtype)
    ws1, back1 = _run(monkeypatch, "1", args, dy)
    monkeypatch.setattr(recurrence_ops, "gemm_address", lambda dtype: None)
    ws0, back0 = _run(monkeypatch, "1", args, dy)
    np.testing.assert_array_equal(ws1, ws0)
    np.testing.assert_array_equal(back1[:7], back0[:7])  # T = 6 steps, then c0's block
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == np.float64 else {"rtol": 2e-6, "atol": 2e-6}
    np.testing.assert_allclose(back1[7:], back0[7:], **tol)
    assert not np.any(back1[7:].reshape(-1)[4 * 5 * 10 :])  # the padding after (4H, K) is 0


@needs_numba
def test_backward_loop_takes_weights_of_another_dtype_or_layout(monkeypatch):
    """``W_hh`` in float32 or as a strided view, the rest float64: the loop's GEMM gets a
    contiguous float64 copy, and the cotangents match the NumPy path."""
    args, dy = _args(steps=4, n=2, inputs=3, hidden=5, seed=5)
    x, h0, c0, w_ih, w_hh, b = args
    wide = np.zeros((4 * 5, 10))
    wide[:, ::2] = w_hh
    for weight in (w_hh.astype(np.float32), wide[:, ::2]):
        mixed = (x, h0, c0, w_ih, weight, b)
        ws1, packed1 = _run(monkeypatch, "1", mixed, dy)
        ws0, packed0 = _run(monkeypatch, "0", mixed, dy)
        np.testing.assert_allclose(packed1, packed0, rtol=1e-12, atol=1e-13)


@needs_numba
def test_tanh_f32_is_within_six_ulps_everywhere():
    """The float32 forward's rational tanh, compiled as the kernel runs it, against tanh in
    float64: <= 6 float32 ulps over [-12, 12] and near 0; exact at 0, -0.0, +-inf, NaN."""
    numba = pytest.importorskip("numba")
    jit._jitable(lstm_kernels.tanh_f32)

    @numba.njit(error_model="numpy", fastmath={"contract"})  # as STEP_FORWARD_F32 compiles
    def run(x, out):
        for i in range(x.size):
            out[i] = lstm_kernels.tanh_f32(x[i])

    grid = np.linspace(-12, 12, 400_001, dtype=np.float32)
    small = np.linspace(-1e-3, 1e-3, 20_001, dtype=np.float32)
    x = np.concatenate([grid, small, np.float32([7.90531, 8.0, 1e-30, -1e-30])])
    out = np.empty_like(x)
    run(x, out)
    exact = np.tanh(x.astype(np.float64))
    ulps = np.abs(out - exact) / np.spacing(np.abs(exact).astype(np.float32))
    assert out.dtype == np.float32 and ulps.max() <= 6, ulps.max()
    special = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan])
    got = np.empty_like(special)
    run(special, got)
    assert got[:4].tolist() == [0.0, 0.0, 1.0, -1.0] and np.signbit(got[1])
    assert np.isnan(got[4])
    assert lstm_kernels.tanh_f32(np.float32(0.5)) == run_one(run, 0.5)  # Python == compiled


def run_one(run, value):
    out = np.empty(1, np.float32)
    run(np.float32([value]), out)
    return out[0]


@needs_numba
def test_float32_forward_matches_float64_to_float32_precision(monkeypatch):
    """The float32 step (rational tanh) stays within float32 rounding of the float64 layer."""
    args, dy = _args(steps=20, n=4, inputs=5, hidden=16, seed=3)
    ws64, packed64 = _run(monkeypatch, "1", args, dy)
    ws32, packed32 = _run(monkeypatch, "1", tuple(a.astype(np.float32) for a in args),
                          dy.astype(np.float32))  # fmt: skip
    np.testing.assert_allclose(ws32, ws64, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(packed32, packed64, rtol=2e-4, atol=2e-5)
