"""The convolution primitives and their derivative rules (NCHW, cross-correlation as PyTorch).

Three primitives, closed under differentiation, so gradients of every order stay on the tape:

- ``conv2d(x, w, b, ...)``: the convolution, ``(N, C, H, W) -> (N, O, Ho, Wo)``;
- ``conv_transpose2d(y, w, b, ..., input_size)``: its transpose w.r.t. ``x`` (the data
  gradient, and the forward pass of ``ConvTranspose2d``), ``(N, O, Ho, Wo) -> (N, C, H, W)``;
- ``conv2d_weight(x, dy, ..., kernel_size)``: its transpose w.r.t. ``w`` (the filter gradient).

Each is bilinear, and the derivatives of each are the other two (``<conv(x, w), dy> =
<x, conv_t(dy, w)> = <w, conv_w(x, dy)>``). Every one is one GEMM per group over an ``im2col``
matrix ``(C * kh * kw, columns)``, built from a strided window view (``as_strided``: no Python
loop over pixels) of the input laid out **channel-major**, ``(C, N, H, W)``:

- *Flat columns* (stride 1, when at most ``_FLAT_WASTE`` = 1.5x the needed columns): one
  column per position of the padded input grid ``(N, Hp, Wp)``, not per output position. Row
  ``(c, i, j)`` of the im2col matrix is then channel ``c``'s whole grid shifted by ``i * Wp +
  j``: one contiguous run, copied at memory speed; ``conv_transpose2d`` runs the GEMM first and
  adds the columns back with one contiguous add per kernel offset (col2im). The columns whose
  window leaves the image (``(Hp Wp) / (Ho Wo)``, 1.17x for 3x3 on 26x26) are computed and
  never read. ``conv2d`` and ``conv_transpose2d`` use it.
- *Compact columns* (any stride, and ``conv2d_weight`` always): one column per output
  position; the copy moves runs of ``Wo`` values, and col2im is one strided add per offset.
  ``conv2d_weight`` prefers it because its ``dy`` operand, ``(O, N * Ho * Wo)``, is then the
  channel-major ``dy`` itself, with no copy.

The results are returned as ``(N, C, H, W)`` *views* of the channel-major GEMM output (no copy
back to NCHW). NumPy's elementwise ops keep a layout (``relu(y)`` is channel-major too), so in
a ``Conv2d -> relu -> Conv2d`` chain the next convolution's input and the gradients reaching it
are already channel-major and need no layout copy. Measured on the conv workload of
``benchmarks/`` (2 cores, OpenBLAS, batch 64, 16 -> 32 channels on 26x26): this takes the
second layer's three convolutions from ~37 to ~29 ms in isolation, and the training step from
2.1x to 1.85-1.9x PyTorch's time (``benchmarks/README.md``, "Conv step after optimisation").
Tried and dropped: cache-sized column blocks (faster in isolation, slower inside the step: each
block's 2-thread GEMM waits for both threads), a NHWC layout (its GEMM orientation suits
OpenBLAS better, but col2im then adds runs of ``C`` values), 9 per-offset GEMMs for the filter
gradient (K = C too small), and flat columns for the filter gradient (they need a zero-padded
copy of ``dy``, and the GEMM is 17% larger). Geometry arguments are normalised tuples: ``stride
(sh, sw)``, ``padding ((top, bottom), (left, right))``, ``dilation (dh, dw)``, ``groups``.

*The im2col cache.* ``conv2d_columns(x, ...)``, a fourth primitive, returns the compact im2col
matrix (with a row of ones for the bias); ``conv2d(..., cols=)`` and ``conv2d_weight(...,
cols=)`` take it instead of building their own (``cols`` is declared ``nodiff``: a cache of
``x``, whose own rules carry the gradient; ``conv2d_columns``'s rule differentiates a traced
reference). ``Conv2d`` builds it as its own tape node on NumPy arrays with one group
(:func:`use_columns`), so the filter gradient reuses the forward's copy, as PyTorch's CPU
convolution keeps its unfolded input for backward; a compiled step writes it into a planned
buffer (made once: a fresh 21 MB array per step made glibc map and fault in new pages every
call, 4000 page faults a step). The forward GEMM then runs on compact columns (the flat grid's
1.17x columns dropped). On the ConvNet step: second layer's forward 8.4 -> 9.0 ms (the copy is
now its own node), its filter gradient 7.2 -> 4.2 ms, and the relu after it reads a dense
array; the step 36 -> 33 ms.

With Numba (:mod:`nnflow.jit`; ``NNFLOW_NUMBA`` not ``"0"``) and NumPy arrays, three loops run
as kernels of :mod:`~nnflow.layers.conv_kernels` with bitwise the same results: the flat
col2im of ``conv_transpose2d`` (channel by channel, in cache), its ``dy`` put on the flat grid
(when ``dy`` is channel-major), and the compact im2col copy of stride-1 convolutions
(``conv2d_weight``); everything else, and all of it without Numba, is the NumPy formulation
above. ``conv2d`` on NumPy arrays with a bias (and one group) adds the bias inside its GEMM, as
one more column of the filter matrix against a row of ones appended to the im2col matrix,
instead of a pass over the output (inside the ConvNet step: 9.8 -> 9.3 ms for its two calls).

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
from .conv_kernels import COL2IM_FLAT, GRID_PAD, IM2COL_COMPACT

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "conv2d_weight",
    "conv2d_columns",
    "use_columns",
    "conv_output_size",
    "conv_backend",
]

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


class _Geometry:
    """Where a convolution's GEMM columns lie: one column per output position (``"compact"``,
    ``(N, Ho, Wo)``) or, for stride 1 when ``flat`` is allowed, one per position of the padded
    input grid (``"flat"``, ``(N, Hp, Wp)``: the columns whose window leaves the image are
    computed and never read).

    In the flat layout every im2col row, every col2im add and the output are single
    contiguous runs along the grid, whatever the kernel offset.
    """

    def __init__(self, x_shape, out_size, kernel, stride, padding, dilation, flat=True):
        n, c, h, w = x_shape
        (pt, pb), (pl, pr) = padding
        self.n, self.c = n, c
        self.hp, self.wp = h + pt + pb, w + pl + pr
        self.ho, self.wo = out_size
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        (kh, kw), (dh, dw) = kernel, dilation
        self.flat = (
            flat
            and tuple(stride) == ONE
            and (self.ho, self.wo) == (self.hp - dh * (kh - 1), self.wp - dw * (kw - 1))
            and self.hp * self.wp <= _FLAT_WASTE * self.ho * self.wo
        )
        self.grid = (self.hp, self.wp) if self.flat else (self.ho, self.wo)
        self.size = n * self.grid[0] * self.grid[1]  # columns of a grid array (rows, size)
        # GEMM columns: in the flat layout the last output position is column m - 1
        self.m = self.size - dh * (kh - 1) * self.wp - dw * (kw - 1) if self.flat else self.size

    def offsets(self):
        """``(i, j, flat offset)`` of each kernel offset, row-major."""
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        for i in range(kh):
            for j in range(kw):
                yield i, j, i * dh * self.wp + j * dw


_FLAT_WASTE = 1.5  # the flat layout when it computes at most 1.5x the needed columns


def _channel_major(x, padding=NO_PAD):
    """``x (N, C, H, W)`` as a contiguous ``(C, N, H + pads, W + pads)`` array: a view when
    ``x`` already lies channel-major in memory (the outputs of this module do), else a copy
    whose inner runs are whole image rows."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = padding
    t = x.transpose(1, 0, 2, 3)
    if not (pt or pb or pl or pr):
        return xp.ascontiguousarray(t)
    out = xp.zeros((c, n, h + pt + pb, w + pl + pr), dtype=x.dtype)
    out[:, :, pt : pt + h, pl : pl + w] = t
    return out


def _strided(xp, a, shape, strides):
    if xp is np:
        return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape, strides)  # CuPy's has no ``writeable``


def _columns(x, geo, extra_row=False, out=None):
    """The im2col matrix of ``x``: ``(C * kh * kw, m)`` (a copy), rows ordered ``(c, i, j)``
    like ``w.reshape(O, -1)``'s columns; with ``extra_row`` one more row, left unset. Written
    into ``out`` if given (of that shape)."""
    xp = get_array_module(x)
    t = _channel_major(x, geo.padding)
    c, n, hp, wp = t.shape
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    sc, sn, srow, scol = t.strides
    rows = c * kh * kw
    if geo.flat:  # row (c, i, j) is the channel's grid shifted by the offset: one run
        view = _strided(xp, t, (c, kh, kw, geo.m), (sc, srow * dh, scol * dw, scol))
    else:
        shape = (c, kh, kw, n, geo.ho, geo.wo)
        fused = IM2COL_COMPACT.get(t) if tuple(geo.stride) == ONE else None
        if fused is not None and (out is None or type(out) is np.ndarray):
            cols = np.empty((rows + extra_row, geo.m), t.dtype) if out is None else out
            fused(t, cols[:rows].reshape(shape), dh, dw)  # row by row (Numba): ~20% faster
            return cols
        view = _strided(xp, t, shape, (sc, srow * dh, scol * dw, sn, srow * sh, scol * sw))
    if not extra_row and out is None:
        return view.reshape(rows, geo.m)
    cols = xp.empty((rows + extra_row, geo.m), t.dtype) if out is None else out
    cols[:rows].reshape(view.shape)[...] = view
    return cols


def _grid(dy, geo):
    """``dy (N, O, Ho, Wo)`` as the GEMM operand ``(O, size)`` on ``geo``'s grid (zero where
    the flat grid has no output; a view for a compact grid and a channel-major ``dy``)."""
    xp = get_array_module(dy)
    n, o, ho, wo = dy.shape
    t = dy.transpose(1, 0, 2, 3)
    if not geo.flat:
        return xp.ascontiguousarray(t).reshape(o, geo.size)
    fused = GRID_PAD.get(t) if t.flags.c_contiguous else None
    if fused is not None:  # values and zeros in one pass (Numba)
        g = np.empty((o, n, geo.hp, geo.wp), dtype=dy.dtype)
        fused(t, g)
        return g.reshape(o, geo.size)
    g = xp.zeros((o, n, geo.hp, geo.wp), dtype=dy.dtype)
    g[:, :, :ho, :wo] = t
    return g.reshape(o, geo.size)


def _as_nchw(g, geo, rows):
    """The ``(N, rows, Ho, Wo)`` view of a grid array ``g (rows, size)`` (channel-major)."""
    gh, gw = geo.grid
    return g.reshape(rows, geo.n, gh, gw)[:, :, : geo.ho, : geo.wo].transpose(1, 0, 2, 3)


def _gemm(xp, groups, a, b, out, transpose_a=False):
    """``out[rows of group k] = a_k @ b_k`` (``a_k``, ``b_k`` row blocks of ``a`` and ``b``;
    ``a_k.T`` with ``transpose_a``), one 2-D GEMM per group, written in place."""
    ra, rb, ro = a.shape[0] // groups, b.shape[0] // groups, out.shape[0] // groups
    for k in range(groups):
        ak, bk = a[k * ra : (k + 1) * ra], b[k * rb : (k + 1) * rb]
        _matmul_into(xp, ak.T if transpose_a else ak, bk, out[k * ro : (k + 1) * ro])
    return out


def _matmul_into(xp, a, b, out):
    """``out[...] = a @ b``: NumPy writes a strided ``out`` directly (BLAS takes its row
    stride); other array modules compute into a fresh array first."""
    if xp is np:
        np.matmul(a, b, out=out)
    else:
        out[...] = xp.matmul(a, b)


def _out_size(x_shape, kernel, stride, padding, dilation):
    return tuple(
        conv_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a])
        for a in (0, 1)
    )


@ad.primitive
def conv2d(x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1, cols=None):
    """2-D cross-correlation of ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)``, plus ``b``.

    ``cols``, if given, is ``conv2d_columns(x, ...)`` for this geometry (with its row of ones
    when ``b`` is given): the GEMM then runs on it, and the filter gradient reuses it (a cache
    of ``x``, not differentiated, as PyTorch's CPU convolution keeps its unfolded input).

    >>> conv2d(np.ones((2, 4, 5, 5)), np.ones((6, 2, 3, 3)), None, (2, 2), ((1, 1), (1, 1)),
    ...        (1, 1), 2).shape
    (2, 6, 3, 3)
    """
    lib = _cudnn_for(padding, x, w, b) if cols is None else None
    if lib is not None:
        return _cudnn_conv2d(lib, x, w, b, stride, padding, dilation, groups)
    xp = get_array_module(x)
    o, kernel = w.shape[0], w.shape[2:]
    out = _out_size(x.shape, kernel, stride, padding, dilation)
    geo = _Geometry(x.shape, out, kernel, stride, padding, dilation, flat=cols is None)
    wmat = w.reshape(o, -1)
    y = xp.empty((o, geo.size), dtype=xp.result_type(w.dtype, x.dtype))
    if cols is not None:
        _check_columns(cols, x, geo, b is not None, groups)
    if b is not None and groups == 1 and xp is np:  # the bias as one more GEMM column
        if cols is None:  # ... times a row of ones: no pass over y
            cols = _columns(x, geo, extra_row=True)
            cols[-1] = 1
        wb = np.empty((o, wmat.shape[1] + 1), dtype=y.dtype)
        wb[:, :-1], wb[:, -1] = wmat, b
        _gemm(xp, 1, wb, cols, y[:, : geo.m])
        return _as_nchw(y, geo, o)
    _gemm(xp, groups, wmat, _columns(x, geo) if cols is None else cols, y[:, : geo.m])
    if b is not None:
        y[:, : geo.m] += b.reshape(o, 1)
    return _as_nchw(y, geo, o)


@ad.primitive
def conv2d_columns(x, kernel_size, stride=ONE, padding=NO_PAD, dilation=ONE, ones=False, *,
                   out=None):  # fmt: skip
    """The im2col matrix of ``x`` for this geometry in the compact layout (one column per
    output position), ``(C kh kw [+ 1], N Ho Wo)``, with a last row of ones if ``ones`` (the
    bias's row). Pass it as ``conv2d(..., cols=)``: the forward GEMM and the filter
    gradient then share one copy. ``out``: an array of the result's shape and dtype to write
    it into (what a compiled step passes).

    >>> conv2d_columns(np.ones((2, 1, 4, 4)), (3, 3), ones=True).shape  # 9 + 1 rows, 2 * 2 * 2
    (10, 8)
    """
    size = _out_size(x.shape, kernel_size, stride, padding, dilation)
    geo = _Geometry(x.shape, size, tuple(kernel_size), stride, padding, dilation, flat=False)
    if out is None:  # always a fresh array (for a 1x1 kernel a reshape could be a view of x)
        rows = x.shape[1] * geo.kernel[0] * geo.kernel[1] + bool(ones)
        out = get_array_module(x).empty((rows, geo.m), dtype=x.dtype)
    _columns(x, geo, extra_row=ones, out=out)
    if ones:
        out[-1] = 1
    return out


# a compiled step hands it a buffer (made once; the matrix is the step's largest array)
conv2d_columns.__nnflow_out_kind__ = "out"


def use_columns(x, w, b=None, groups=1) -> bool:
    """Whether ``conv2d`` on these arguments takes ``cols`` (``conv2d_columns``): NumPy arrays,
    one group (cuDNN and grouped convolutions compute their own).

    >>> use_columns(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
    True
    """
    return groups == 1 and get_array_module(x, w, b) is np


def _check_columns(cols, x, geo, ones, groups):
    rows = x.shape[1] * geo.kernel[0] * geo.kernel[1] + bool(ones)
    if groups != 1 or tuple(cols.shape) != (rows, geo.m) or cols.dtype != x.dtype:
        raise ValueError(
            f"conv2d: cols {tuple(cols.shape)} {cols.dtype} is not conv2d_columns of x "
            f"{tuple(x.shape)} {x.dtype} for this geometry ({rows}, {geo.m}), one group"
        )


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
    geo = _Geometry((n, c, *input_size), (ho, wo), (kh, kw), stride, padding, dilation)
    wmat = w.reshape(o, cg * kh * kw)
    g = _grid(y, geo)
    dtype = xp.result_type(w.dtype, y.dtype)
    out = xp.empty((c, n * geo.hp * geo.wp), dtype=dtype)
    rows = c * kh * kw
    cols = _gemm(xp, groups, wmat, g[:, : geo.m], xp.empty((rows, geo.m), dtype), transpose_a=True)
    fused = COL2IM_FLAT.get(cols, out) if geo.flat else None
    if fused is not None:  # col2im channel by channel, in cache (Numba): the same adds
        shifts = np.array([shift for _, _, shift in geo.offsets()], dtype=np.int64)
        fused(cols.reshape(c, kh * kw, geo.m), shifts, out)
    elif geo.flat:  # col2im: one add of contiguous runs per kernel offset
        cols = cols.reshape(c, kh, kw, geo.m)
        out[:, geo.m :] = 0
        for i, j, shift in geo.offsets():  # (0, 0) first: it writes, the others add
            if shift == 0:
                out[:, : geo.m] = cols[:, i, j]
            else:
                out[:, shift : shift + geo.m] += cols[:, i, j]
    else:  # one strided add per kernel offset
        cols = cols.reshape(c, kh, kw, n, ho, wo)
        out[...] = 0
        grid = out.reshape(c, n, geo.hp, geo.wp)
        (sh, sw), (dh, dw) = stride, dilation
        for i in range(kh):
            for j in range(kw):
                rows_ = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                columns = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                grid[:, :, rows_, columns] += cols[:, i, j]
    if b is not None:
        out += b.reshape(c, 1)
    (pt, _), (pl, _) = padding
    h, wd = input_size
    grid = out.reshape(c, n, geo.hp, geo.wp)[:, :, pt : pt + h, pl : pl + wd]
    return grid.transpose(1, 0, 2, 3)


@ad.primitive
def conv2d_weight(x, dy, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1, kernel_size=None,
                  cols=None):  # fmt: skip
    """The transpose of ``conv2d`` w.r.t. its filter: ``sum_n dy * windows(x)``, shaped
    ``(O, C/groups, kh, kw)`` (the filter gradient). ``cols``: ``conv2d_columns(x, ...)``,
    reused instead of building the im2col matrix again (with or without its row of ones).

    >>> conv2d_weight(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)), kernel_size=(3, 3))[0, 0]
    array([[4., 4., 4.],
           [4., 4., 4.],
           [4., 4., 4.]])
    """
    lib = _cudnn_for(padding, x, dy) if cols is None else None
    if lib is not None:
        return _cudnn_conv2d_weight(lib, x, dy, stride, padding, dilation, groups, kernel_size)
    xp = get_array_module(x)
    n, o, ho, wo = dy.shape
    kernel = tuple(kernel_size)
    # compact columns: dy is then the GEMM operand as it lies (channel-major) or one copy
    geo = _Geometry(x.shape, (ho, wo), kernel, stride, padding, dilation, flat=False)
    g = _grid(dy, geo)  # (O, m)
    rows = x.shape[1] * kernel[0] * kernel[1]
    if cols is None:
        cols = _columns(x, geo)  # (C*kh*kw, m)
    else:  # the forward's (compact) im2col matrix, maybe with its row of ones
        _check_columns(cols, x, geo, cols.shape[0] > rows, groups)
        cols = cols[:rows]
    # per group (cols @ dy^T)^T: OpenBLAS runs this orientation faster than dy @ cols^T here
    dw_t = xp.empty((cols.shape[0] // groups, o), dtype=xp.result_type(x.dtype, dy.dtype))
    _gemm_weight(xp, groups, cols, g, dw_t)
    return dw_t.T.reshape(o, x.shape[1] // groups, *kernel)


def _gemm_weight(xp, groups, cols, g, out):
    """``out[:, group k's columns] = cols_k @ g_k.T`` (``cols_k``, ``g_k`` row blocks)."""
    rc, rg = cols.shape[0] // groups, g.shape[0] // groups
    for k in range(groups):
        gk = g[k * rg : (k + 1) * rg]
        _matmul_into(xp, cols[k * rc : (k + 1) * rc], gk.T, out[:, k * rg : (k + 1) * rg])
    return out


# -- rules: each primitive's derivatives are the other two ----------------------------------------
def _bias_grad(dy):
    return np.sum(dy, axis=(0, 2, 3))


def _conv_dx(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
             cols=None):  # fmt: skip
    return conv_transpose2d(dy, w, None, stride, padding, dilation, groups, x.shape[2:])


def _conv_dw(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
             cols=None):  # fmt: skip
    return conv2d_weight(x, dy, stride, padding, dilation, groups, w.shape[2:], cols)


def _conv_db(dy, y, x, w, b=None, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
             cols=None):  # fmt: skip
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
              kernel_size=None, cols=None):  # fmt: skip
    return conv_transpose2d(dy, g, None, stride, padding, dilation, groups, x.shape[2:])


def _convw_ddy(g, out, x, dy, stride=ONE, padding=NO_PAD, dilation=ONE, groups=1,
               kernel_size=None, cols=None):  # fmt: skip
    return conv2d(x, g, None, stride, padding, dilation, groups)


def _reference_columns(x, kernel_size, stride=ONE, padding=NO_PAD, dilation=ONE, ones=False):
    """``conv2d_columns`` written with traced NumPy calls (padding, slices, stack): what its
    rule differentiates."""
    out = _out_size(np.shape(x), kernel_size, stride, padding, dilation)
    geo = _Geometry(np.shape(x), out, tuple(kernel_size), stride, padding, dilation, flat=False)
    t = np.pad(np.transpose(x, (1, 0, 2, 3)), ((0, 0), (0, 0), *padding))
    c = np.shape(t)[0]
    (sh, sw), (dh, dw) = stride, dilation
    span_h, span_w = sh * (geo.ho - 1) + 1, sw * (geo.wo - 1) + 1
    rows = [
        np.reshape(t[:, :, i * dh : i * dh + span_h : sh, j * dw : j * dw + span_w : sw],
                   (c, geo.m))
        for i, j, _ in geo.offsets()
    ]  # fmt: skip
    cols = np.reshape(np.stack(rows, axis=1), (-1, geo.m))
    if ones:
        cols = np.concatenate([cols, np.ones((1, geo.m), dtype=np.result_type(x))], axis=0)
    return cols


def _columns_dx(g, out, x, kernel_size, stride=ONE, padding=NO_PAD, dilation=ONE, ones=False):
    geometry = (kernel_size, stride, padding, dilation, ones)
    return ad.vjp(lambda x: _reference_columns(x, *geometry), x)[1](g)[0]


for _fn, _rules in (
    (conv2d, {"x": _conv_dx, "w": _conv_dw, "b": _conv_db}),
    (conv_transpose2d, {"y": _convt_dy, "w": _convt_dw, "b": _convt_db}),
    (conv2d_weight, {"x": _convw_dx, "dy": _convw_ddy}),
    (conv2d_columns, {"x": _columns_dx}),
):
    for _name, _rule in _rules.items():
        ad.diffrule(_fn, _name)(_rule)
ad.nodiff(conv2d, "cols")  # a cache of x (x's own rule carries its gradient)
ad.nodiff(conv2d_weight, "cols")


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
        # the flat stride-1 layout with asymmetric padding, dilation and groups
        "flat-asymmetric": (r(1, 4, 8, 8), r(4, 2, 2, 2), ((1, 1), ((1, 0), (0, 1)), (2, 1), 2)),
    }.items():
        b = r(w.shape[0])
        ysize = conv2d(x, w, None, *geo).shape
        dy = r(*ysize)

        def with_columns(x, w, b, geo=geo, k=w.shape[2:]):
            return conv2d(x, w, b, *geo, cols=conv2d_columns(x, k, *geo[:3], ones=True))

        def weight_with_columns(x, dy, geo=geo, k=w.shape[2:]):
            return conv2d_weight(x, dy, *geo, k, cols=conv2d_columns(x, k, *geo[:3]))

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
        if geo[3] == 1:  # the im2col cache (one group): conv2d and its filter gradient
            cases += [
                Case(conv2d, with_columns, (x, w, b), name + "-columns"),
                Case(conv2d_weight, weight_with_columns, (x, dy), name + "-columns"),
                Case(conv2d_columns, lambda x, geo=geo, k=w.shape[2:]: conv2d_columns(
                    x, k, *geo[:3], ones=True), (x,), name),
            ]  # fmt: skip
    big = r(2, 2, 7, 6)  # without the row of ones, dilated
    cases.append(Case(conv2d_columns, lambda x: conv2d_columns(x, (2, 3), ONE, NO_PAD, (2, 1)),
                      (big,), "dilated"))  # fmt: skip
    return cases


register_cases(_cases())
