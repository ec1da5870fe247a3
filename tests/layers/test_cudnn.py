"""The convolutions' choice between cuDNN and the GEMM formulation, and the cuDNN calls.

cuDNN itself needs a GPU; here a stand-in with ``cupyx.cudnn``'s three functions (same
signatures, keyword-only flags, results written into the output it is given) computes with a
direct loop over kernel offsets. It checks the selection (which arrays go to cuDNN), how the
primitives call it (padding, output shapes and dtypes, bias), and that the results and
gradients equal the GEMM formulation's.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnflow import ad, backend, layers
from nnflow.backend import to_device
from nnflow.layers.convolution import conv2d, conv2d_weight, conv_backend, conv_transpose2d


def _windows(xp_, i, j, out_size, stride, dilation):
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_size
    rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
    cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
    return xp_[:, :, rows, cols]


class FakeCudnn:
    """``cupyx.cudnn``'s convolution functions, by a direct loop over the kernel offsets."""

    def __init__(self):
        self.calls: list[str] = []

    def _check(self, name, arrays, pad, stride, dilation, groups, flags, out):
        self.calls.append(name)
        assert all(isinstance(p, int) for p in pad) and len(pad) == 2, pad
        assert type(stride) is tuple and type(dilation) is tuple and isinstance(groups, int)
        assert flags.get("auto_tune") is False and flags.get("tensor_core") == "auto"
        assert len({a.dtype for a in arrays if a is not None} | {out.dtype}) == 1
        assert out.flags.c_contiguous

    def convolution_forward(self, x, W, b, y, pad, stride, dilation, groups, **flags):
        self._check("forward", (x, W, b), pad, stride, dilation, groups, flags, y)
        x, W = np.asarray(x), np.asarray(W)
        ph, pw = pad
        xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        o, cg, kh, kw = W.shape
        og = o // groups
        out = np.zeros(y.shape, y.dtype)
        for i in range(kh):
            for j in range(kw):
                patch = _windows(xp_, i, j, y.shape[2:], stride, dilation)
                for g in range(groups):
                    out[:, g * og : (g + 1) * og] += np.einsum(
                        "nchw,oc->nohw", patch[:, g * cg : (g + 1) * cg],
                        W[g * og : (g + 1) * og, :, i, j],
                    )  # fmt: skip
        if b is not None:
            out += np.asarray(b).reshape(1, -1, 1, 1)
        y[...] = out

    def convolution_backward_data(self, W, x, b, y, pad, stride, dilation, groups, **flags):
        assert "deterministic" in flags
        flags.pop("deterministic")
        self._check("backward_data", (W, x, b), pad, stride, dilation, groups, flags, y)
        W, gy = np.asarray(W), np.asarray(x)
        ph, pw = pad
        n, c, h, w = y.shape
        o, cg, kh, kw = W.shape
        og = o // groups
        gx = np.zeros((n, c, h + 2 * ph, w + 2 * pw), y.dtype)
        for i in range(kh):
            for j in range(kw):
                target = _windows(gx, i, j, gy.shape[2:], stride, dilation)
                for g in range(groups):
                    target[:, g * cg : (g + 1) * cg] += np.einsum(
                        "nohw,oc->nchw", gy[:, g * og : (g + 1) * og],
                        W[g * og : (g + 1) * og, :, i, j],
                    )  # fmt: skip
        gx = gx[:, :, ph : ph + h, pw : pw + w]
        if b is not None:
            gx = gx + np.asarray(b).reshape(1, -1, 1, 1)
        y[...] = gx

    def convolution_backward_filter(self, x, gy, gW, pad, stride, dilation, groups, **flags):
        assert "deterministic" in flags
        flags.pop("deterministic")
        self._check("backward_filter", (x, gy), pad, stride, dilation, groups, flags, gW)
        x, gy = np.asarray(x), np.asarray(gy)
        ph, pw = pad
        xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        o, cg, kh, kw = gW.shape
        og = o // groups
        out = np.zeros(gW.shape, gW.dtype)
        for i in range(kh):
            for j in range(kw):
                patch = _windows(xp_, i, j, gy.shape[2:], stride, dilation)
                for g in range(groups):
                    out[g * og : (g + 1) * og, :, i, j] = np.einsum(
                        "nohw,nchw->oc", gy[:, g * og : (g + 1) * og],
                        patch[:, g * cg : (g + 1) * cg],
                    )  # fmt: skip
        gW[...] = out


@pytest.fixture
def cudnn(monkeypatch):
    """Every convolution's arrays treated as cuDNN-able: ``backend.cudnn`` gives the stand-in."""
    fake = FakeCudnn()
    monkeypatch.setattr(backend, "cudnn", lambda *arrays: fake)
    return fake


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def geometry(stride=1, pad=0, dilation=1, groups=1):
    return (stride, stride), ((pad, pad), (pad, pad)), (dilation, dilation), groups


# -- which implementation -----------------------------------------------------------------------
def test_cpu_arrays_take_the_gemm_formulation():
    x, w = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    assert backend.cudnn(x, w) is None
    assert conv_backend(x, w) == "gemm"


def test_selection_with_cudnn_available(cudnn):
    x, w, b = rand(1, 2, 5, 5), rand(3, 2, 3, 3), rand(3)
    assert conv_backend(x, w, b, ((1, 1), (2, 2))) == "cudnn"
    assert conv_backend(x, w, None, ((0, 1), (0, 1))) == "gemm"  # cuDNN pads both sides alike
    assert conv_backend(x, w.astype(np.float32)) == "gemm"  # one dtype only
    assert conv_backend(x.astype(np.float32), w.astype(np.float32)) == "cudnn"
    assert conv_backend(x.astype(np.float16), w.astype(np.float16)) == "cudnn"
    assert conv_backend(x.astype(np.int32), w.astype(np.int32)) == "gemm"


def test_backend_cudnn_on_the_gpu_stand_in(fake_gpu, monkeypatch):
    lib = FakeCudnn()
    monkeypatch.setattr(backend, "_load_cudnn", lambda: (lib, ""))
    x = to_device(rand(1, 2, 5, 5), "gpu")
    w = to_device(rand(3, 2, 3, 3), "gpu")
    assert backend.cudnn(x, w) is lib and conv_backend(x, w) == "cudnn"
    assert backend.cudnn(x, rand(3)) is None  # a host array: not cuDNN's
    monkeypatch.setenv("NNFLOW_CUDNN", "0")
    assert backend.cudnn(x, w) is None and conv_backend(x, w) == "gemm"
    monkeypatch.setattr(backend, "_load_cudnn", lambda: (None, "no libcudnn"))
    monkeypatch.delenv("NNFLOW_CUDNN")
    assert backend.cudnn(x, w) is None  # CuPy without cuDNN: the GEMM formulation on CuPy


# -- the cuDNN calls give the GEMM formulation's results ------------------------------------------
CASES = {
    "plain": ((2, 2, 5, 5), (3, 2, 3, 3), geometry()),
    "stride-pad": ((1, 2, 6, 5), (2, 2, 3, 2), geometry(2, 1)),
    "dilation-groups": ((1, 4, 7, 7), (4, 2, 2, 2), geometry(1, 1, 2, 2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_primitives_match_the_gemm_formulation(name, monkeypatch):
    xs, ws, geo = CASES[name]
    x, w, b = rand(*xs), rand(*ws, seed=1), rand(ws[0], seed=2)
    y_gemm = conv2d(x, w, b, *geo)
    dy = rand(*y_gemm.shape, seed=3)
    dx_gemm = conv_transpose2d(dy, w, rand(xs[1], seed=4), *geo, xs[2:])
    dw_gemm = conv2d_weight(x, dy, *geo, ws[2:])
    fake = FakeCudnn()
    monkeypatch.setattr(backend, "cudnn", lambda *arrays: fake)
    np.testing.assert_allclose(conv2d(x, w, b, *geo), y_gemm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        conv_transpose2d(dy, w, rand(xs[1], seed=4), *geo, xs[2:]), dx_gemm, rtol=1e-12,
        atol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(conv2d_weight(x, dy, *geo, ws[2:]), dw_gemm, rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    assert fake.calls == ["forward", "backward_data", "backward_filter"]


def test_layer_gradients_through_cudnn(cudnn):
    model = layers.Chain(
        layers.Conv2d(2, 4, 3, padding=1, groups=2, rng=0),
        layers.ConvTranspose2d(4, 2, 2, stride=2, rng=1),
    ).astype(np.float64)
    x = rand(2, 2, 5, 5)

    def loss(m, x):
        return np.sum(m(x) ** 2)

    value, g = ad.grad(loss, model, x)
    assert {"forward", "backward_data", "backward_filter"} <= set(cudnn.calls)
    ad.gradcheck(loss, model, x)  # cuDNN's three operations are each other's derivatives
    cudnn.calls.clear()
    value2, g2 = ad.compile_grad(loss)(model, x)  # compiled, cuDNN calls in the generated step
    assert cudnn.calls
    np.testing.assert_allclose(float(value2), float(value))
    for path, grad in g[0].items():
        np.testing.assert_allclose(g2[0][path], grad, rtol=1e-12)


def test_asymmetric_padding_never_reaches_cudnn(cudnn):
    conv = layers.Conv2d(2, 3, 2, padding="same", rng=0).astype(np.float64)  # pads (0, 1)
    ad.grad(lambda m, x: np.sum(m(x)), conv, rand(1, 2, 4, 4))
    assert cudnn.calls == []


def test_conv_on_the_gpu_stand_in_through_cudnn(fake_gpu, monkeypatch):
    lib = FakeCudnn()
    monkeypatch.setattr(backend, "_load_cudnn", lambda: (lib, ""))
    conv = layers.Conv2d(2, 3, 3, padding=1, rng=0).astype(np.float64)
    x = rand(2, 2, 5, 5)
    want_value, want = ad.grad(lambda m, x: np.sum(m(x) ** 2), conv, x)
    conv.to("gpu")
    value, g = ad.grad(lambda m, x: np.sum(m(x) ** 2), conv, to_device(x, "gpu"))
    assert lib.calls == ["forward", "backward_data", "backward_filter"]
    assert backend.device_of(g[0][("weight",)]) == "gpu"
    for path, grad in want[0].items():
        np.testing.assert_allclose(to_device(g[0][path], "cpu"), grad, rtol=1e-12)
