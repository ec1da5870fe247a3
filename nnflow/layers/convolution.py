"""The convolution primitives and their derivative rules (NCHW, cross-correlation as PyTorch).

Three primitives, closed under differentiation, so gradients of every order stay on the tape:

- ``conv2d(x, w, b, ...)``: the convolution, ``(N, C, H, W) -> (N, O, Ho, Wo)``;
- ``conv_transpose2d(y, w, b, ..., input_size)``: its transpose w.r.t. ``x`` (the data
  gradient, and the forward pass of ``ConvTranspose2d``), ``(N, O, Ho, Wo) -> (N, C, H, W)``;
- ``conv2d_weight(x, dy, ..., kernel_size)``: its transpose w.r.t. ``w`` (the filter gradient).

Each is bilinear, and the derivatives of each are the other two (``<conv(x, w), dy> =
<x, conv_t(dy, w)> = <w, conv_w(x, dy)>``). Every one is one GEMM per group: the input is
copied to a batch-last ``(C, H, W, N)`` layout and read through a strided window view
(``as_strided``: no Python loop over pixels) into an ``im2col`` matrix ``(C * kh * kw,
Ho * Wo * N)``; ``conv_transpose2d`` does the GEMM first and adds the columns back with one
strided add per kernel offset (``col2im``). With the batch innermost, both copies move long
contiguous runs (PyTorch's CPU kernels make the same choice of a channels/batch-last layout).
Geometry arguments are normalised tuples: ``stride (sh, sw)``, ``padding ((top, bottom),
(left, right))``, ``dilation (dh, dw)``, ``groups``.

On the GPU each primitive calls cuDNN instead (``cupyx.cudnn``'s ``convolution_forward``,
``convolution_backward_data`` and ``convolution_backward_filter``: the same three operations)
when :func:`conv_backend` says so: the arrays are CuPy arrays of one dtype cuDNN computes in
(float16/32/64), cuDNN loads (``nnflow.backend.cudnn``, the only place that imports it), and
the padding is symmetric (cuDNN pads both sides alike; ``padding="same"`` with an even kernel
is not, and takes the GEMM formulation, which runs on CuPy arrays as well). cuDNN picks its
algorithm by heuristics (no auto-tuning) and may use TF32 tensor cores for float32 on Ampere
and newer GPUs, as PyTorch does by default; ``NNFLOW_CUDNN=0`` turns it off.

>>> y = conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
>>> y.shape, float(y[0, 0, 0, 0])
((1, 1, 2, 2), 9.0)
"""

from __future__ import annotations

import numpy as np

from .. import ad, backend
from ..ad.rules import Case, register_cases
from ..backend import get_array_module

__all__ = ["conv2d", "conv_transpose2d", "conv2d_weight", "conv_output_size", "conv_backend"]

ONE, NO_PAD = (1, 1), ((0, 0), (0, 0))
_CUDNN_DTYPES = ("float16", "float32", "float64")


def _cudnn_for(padding, *arrays):
    """CuPy's cuDNN module if these arrays' convolution should run in cuDNN, else ``None``."""
    (pt, pb), (pl, pr) = padding
    if pt != pb or pl != pr:  # cuDNN pads both sides alike
        return None
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype
    if dtype.name not in _CUDNN_DTYPES or any(a.dtype != dtype for a in arrays):
        return None
    return backend.cudnn(*arrays)


def conv_backend(x, w, b=None, padding=NO_PAD) -> str:
    """Which implementation the convolution primitives use for these arrays: ``"cudnn"`` or
    ``"gemm"`` (the module docstring says when).

    >>> conv_backend(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
    'gemm'
    """
    return "gemm" if _cudnn_for(padding, x, w, b) is None else "cudnn"


def _pads(padding) -> tuple[int, int]:
    return padding[0][0], padding[1][0]


def _cudnn_conv2d(lib, x, w, b, stride, padding, dilation, groups):
    """``conv2d`` by cuDNN (into a fresh contiguous output)."""
    xp = get_array_module(x)
    ho, wo = _out_size(x.shape, w.shape[2:], stride, padding, dilation)
    y = xp.empty((x.shape[0], w.shape[0], ho, wo), dtype=x.dtype)
    lib.convolution_forward(
        x, w, b, y, _pads(padding), tuple(stride), tuple(dilation), groups,
        auto_tune=False, tensor_core="auto",
    )  # fmt: skip
    return y


def _cudnn_conv_transpose2d(lib, y, w, b, stride, padding, dilation, groups, input_size):
    """``conv_transpose2d`` by cuDNN: the data gradient of the convolution."""
    xp = get_array_module(y)
    c = w.shape[1] * groups
    out = xp.empty((y.shape[0], c, *input_size), dtype=y.dtype)
    lib.convolution_backward_data(
        w, y, b, out, _pads(padding), tuple(stride), tuple(dilation), groups,
        deterministic=False, auto_tune=False, tensor_core="auto",
    )  # fmt: skip
    return out


def _cudnn_conv2d_weight(lib, x, dy, stride, padding, dilation, groups, kernel_size):
    """``conv2d_weight`` by cuDNN: the filter gradient of the convolution."""
    xp = get_array_module(x)
    dw = xp.empty((dy.shape[1], x.shape[1] // groups, *kernel_size), dtype=x.dtype)
    lib.convolution_backward_filter(
        x, dy, dw, _pads(padding), tuple(stride), tuple(dilation), groups,
        deterministic=False, auto_tune=False, tensor_core="auto",
    )  # fmt: skip
    return dw


def conv_output_size(size: int, kernel: int, stride: int, pad: tuple, dilation: int) -> int:
    """The output length of a convolution along one axis.

    >>> conv_output_size(28, 3, 1, (0, 0), 1), conv_output_size(7, 3, 2, (1, 1), 1)
    (26, 4)
    """
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def _batch_last(x, padding=NO_PAD):
    """``x (N, C, H, W)`` as a contiguous ``(C, H + pads, W + pads, N)`` copy.

    With the batch innermost, every window slice ``[c, i : i + Ho, j : j + Wo, :]`` is one
    run of ``Wo * N`` contiguous values (for stride 1), so the im2col copy and the col2im adds
    stream through memory instead of stepping through rows of ``Wo`` values.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = padding
    shape = (c, h + pt + pb, w + pl + pr, n)
    out = xp.zeros(shape, dtype=x.dtype) if pt or pb or pl or pr else xp.empty(shape, x.dtype)
    out[:, pt : pt + h, pl : pl + w, :] = x.transpose(1, 2, 3, 0)
    return out


def _batch_first(t):
    """``t (C, H, W, N)`` (possibly a strided view) as a contiguous ``(N, C, H, W)`` array.

    NumPy's copy of a whole transposed array reads with a stride of ``N`` values in its inner
    loop (about 8x slower than memory bandwidth here); copying a few rows at a time keeps the
    source block in cache.
    """
    xp = get_array_module(t)
    c, h, w, n = t.shape
    if xp is not np:
        return xp.ascontiguousarray(t.transpose(3, 0, 1, 2))
    out = np.empty((n, c, h, w), dtype=t.dtype)
    step = max(1, 6144 // max(w * n, 1))
    for k in range(c):
        for i in range(0, h, step):
            out[:, k, i : i + step] = t[k, i : i + step].transpose(2, 0, 1)
    return out


def _columns(x, kernel, out_size, stride, padding, dilation):
    """The im2col matrix of ``x``: ``(C * kh * kw, Ho * Wo * N)`` (a copy), rows ordered
    ``(c, i, j)`` like ``w.reshape(O, -1)``'s columns."""
    xp = get_array_module(x)
    t = _batch_last(x, padding)
    c, _, _, n = t.shape
    (kh, kw), (ho, wo) = kernel, out_size
    sc, sh, sw, sn = t.strides
    shape = (c, kh, kw, ho, wo, n)
    strides = (sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1], sn)
    if xp is np:
        windows = np.lib.stride_tricks.as_strided(t, shape, strides, writeable=False)
    else:  # CuPy's as_strided has no ``writeable``
        windows = xp.lib.stride_tricks.as_strided(t, shape, strides)
    return windows.reshape(c * kh * kw, ho * wo * n)


def _rows(y):
    """``y (N, O, Ho, Wo)`` as the GEMM operand ``(O, Ho * Wo * N)`` (a copy)."""
    n, o, ho, wo = y.shape
    return y.transpose(1, 2, 3, 0).reshape(o, ho * wo * n)


def _per_group(groups, a, b, transpose_a=False, transpose_b=False):
    """``a @ b`` on row blocks of ``a`` and ``b`` per group, one 2-D GEMM each, stacked."""
    xp = get_array_module(a)
    ra, rb = a.shape[0] // groups, b.shape[0] // groups
    out = []
    for k in range(groups):
        ak, bk = a[k * ra : (k + 1) * ra], b[k * rb : (k + 1) * rb]
        out.append((ak.T if transpose_a else ak) @ (bk.T if transpose_b else bk))
    return out[0] if groups == 1 else xp.concatenate(out, axis=0)


def _out_size(x_shape, kernel, stride, padding, dilation):
    return tuple(
        conv_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a])
        for a in (0, 1)
    )


@ad.primitive
def conv2d(x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1):
    """2-D cross-correlation of ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)``, plus ``b``.

    >>> conv2d(np.ones((2, 4, 5, 5)), np.ones((6, 2, 3, 3)), None, (2, 2), ((1, 1), (1, 1)),
    ...        (1, 1), 2).shape
    (2, 6, 3, 3)
    """
    lib = _cudnn_for(padding, x, w, b)
    if lib is not None:
        return _cudnn_conv2d(lib, x, w, b, stride, padding, dilation, groups)
    n, o, kernel = x.shape[0], w.shape[0], w.shape[2:]
    ho, wo = _out_size(x.shape, kernel, stride, padding, dilation)
    cols = _columns(x, kernel, (ho, wo), stride, padding, dilation)
    y = _per_group(groups, w.reshape(o, -1), cols)  # (O, Ho*Wo*N)
    if b is not None:
        y += b.reshape(o, 1)
    return _batch_first(y.reshape(o, ho, wo, n))


@ad.primitive
def conv_transpose2d(y, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
                     input_size=None):  # fmt: skip
    """The transpose of ``conv2d`` w.r.t. its input: ``(N, O, Ho, Wo) -> (N, C, H, W)``.

    ``w`` has ``conv2d``'s layout ``(O, C/groups, kh, kw)`` (which is PyTorch's
    ``ConvTranspose2d`` layout ``(in, out/groups, kh, kw)``); ``input_size`` is ``(H, W)``.

    >>> conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), input_size=(4, 4))[0, 0]
    array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]])
    """
    lib = _cudnn_for(padding, y, w, b)
    if lib is not None:
        return _cudnn_conv_transpose2d(lib, y, w, b, stride, padding, dilation, groups, input_size)
    xp = get_array_module(y)
    n, o, ho, wo = y.shape
    cg, kh, kw = w.shape[1:]
    c = cg * groups
    h, wd = input_size
    wmat = w.reshape(o, cg * kh * kw)
    cols = _per_group(groups, wmat, _rows(y), transpose_a=True)  # (C*kh*kw, Ho*Wo*N)
    cols = cols.reshape(c, kh, kw, ho, wo, n)
    (pt, pb), (pl, pr) = padding
    out = xp.zeros((c, h + pt + pb, wd + pl + pr, n), dtype=cols.dtype)
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(kh):  # one strided add per kernel offset (col2im)
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            out[:, rows, columns, :] += cols[:, i, j]
    out = _batch_first(out[:, pt : pt + h, pl : pl + wd, :])
    if b is not None:
        out += b.reshape(1, c, 1, 1)
    return out


@ad.primitive
def conv2d_weight(x, dy, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1, kernel_size=None):
    """The transpose of ``conv2d`` w.r.t. its filter: ``sum_n dy * windows(x)``, shaped
    ``(O, C/groups, kh, kw)`` (the filter gradient).

    >>> conv2d_weight(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)), kernel_size=(3, 3))[0, 0]
    array([[4., 4., 4.],
           [4., 4., 4.],
           [4., 4., 4.]])
    """
    lib = _cudnn_for(padding, x, dy)
    if lib is not None:
        return _cudnn_conv2d_weight(lib, x, dy, stride, padding, dilation, groups, kernel_size)
    n, o, ho, wo = dy.shape
    cols = _columns(x, kernel_size, (ho, wo), stride, padding, dilation)
    # (cols @ dy^T)^T: OpenBLAS runs this orientation 2x faster than dy @ cols^T here
    dy_t = dy.transpose(2, 3, 0, 1).reshape(ho * wo * n, o)  # (Ho*Wo*N, O), a copy
    dw_t = _per_group(groups, cols, dy_t.T, transpose_b=True)  # groups of (Cg*kh*kw, O/g)
    dw = dw_t.reshape(groups, -1, o // groups).transpose(0, 2, 1)  # (g, O/g, Cg*kh*kw)
    return dw.reshape(o, x.shape[1] // groups, *kernel_size)


# -- rules: each primitive's derivatives are the other two ----------------------------------------
def _bias_grad(dy):
    return np.sum(dy, axis=(0, 2, 3))


def _conv_dx(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1):
    return conv_transpose2d(dy, w, None, stride, padding, dilation, groups, x.shape[2:])


def _conv_dw(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1):
    return conv2d_weight(x, dy, stride, padding, dilation, groups, w.shape[2:])


def _conv_db(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1):
    return _bias_grad(dy)


def _convt_dy(g, out, y, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
              input_size=None):  # fmt: skip
    return conv2d(g, w, None, stride, padding, dilation, groups)


def _convt_dw(g, out, y, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
              input_size=None):  # fmt: skip
    return conv2d_weight(g, y, stride, padding, dilation, groups, w.shape[2:])


def _convt_db(g, out, y, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
              input_size=None):  # fmt: skip
    return _bias_grad(g)


def _convw_dx(g, out, x, dy, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
              kernel_size=None):  # fmt: skip
    return conv_transpose2d(dy, g, None, stride, padding, dilation, groups, x.shape[2:])


def _convw_ddy(g, out, x, dy, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
               kernel_size=None):  # fmt: skip
    return conv2d(x, g, None, stride, padding, dilation, groups)


for _fn, _rules in (
    (conv2d, {"x": _conv_dx, "w": _conv_dw, "b": _conv_db}),
    (conv_transpose2d, {"y": _convt_dy, "w": _convt_dw, "b": _convt_db}),
    (conv2d_weight, {"x": _convw_dx, "dy": _convw_ddy}),
):
    for _name, _rule in _rules.items():
        ad.diffrule(_fn, _name)(_rule)


# -- sample cases for the registry test (small: every entry is finite-differenced) ----------------
def _cases() -> list[Case]:
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.normal(size=shape)

    def geometry(stride=1, pad=0, dilation=1, groups=1):
        return (stride, stride), ((pad, pad), (pad, pad)), (dilation, dilation), groups

    cases = []
    for name, (x, w, geo) in {
        "plain": (r(2, 2, 5, 5), r(3, 2, 3, 3), geometry()),
        "stride-pad": (r(1, 2, 6, 5), r(2, 2, 3, 2), geometry(2, 1)),
        "dilation-groups": (r(1, 4, 6, 6), r(4, 2, 2, 2), geometry(1, 1, 2, 2)),
    }.items():
        b = r(w.shape[0])
        ysize = conv2d(x, w, None, *geo).shape
        dy = r(*ysize)
        cases += [
            Case(conv2d, lambda x, w, b, geo=geo: conv2d(x, w, b, *geo), (x, w, b), name),
            Case(
                conv_transpose2d,
                lambda dy, w, b, geo=geo, size=x.shape[2:]: conv_transpose2d(dy, w, b, *geo, size),
                (dy, w, r(x.shape[1])),
                name,
            ),
            Case(
                conv2d_weight,
                lambda x, dy, geo=geo, k=w.shape[2:]: conv2d_weight(x, dy, *geo, k),
                (x, dy),
                name,
            ),
        ]
    return cases


register_cases(_cases())
