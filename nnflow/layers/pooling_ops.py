"""Pooling primitives over ``(N, C, H, W)`` and their derivative rules.

NumPy reductions over the small, strided window axes of a reshaped array are slow (a 2x2
``np.max`` over axes (3, 5) costs 25x the three ``np.maximum`` calls on strided views), and
the per-slice gradient of a composed version allocates a full-size zero array per kernel
offset. So pooling is done by primitives that loop over the ``kh * kw`` kernel offsets (never
over pixels), each offset one strided view:

- ``max_pool2d(x, ...)``; its rule routes ``dy`` to each window's first maximal entry
  (PyTorch's choice for ties) with ``max_pool2d_scatter``, whose rule is ``max_pool2d_gather``
  (read ``g`` at the same winners) and vice versa: gradients of every order stay on the tape.
  The winners depend on ``x`` and ``y`` only through comparisons, so those arguments carry no
  gradient (``ad.nodiff``).
- ``avg_pool2d(x, ...)`` (zero padding counted, PyTorch's default) and its transpose
  ``avg_pool2d_transpose(dy, ...)``, each the other's derivative.

Geometry: ``kernel (kh, kw)``, ``stride (sh, sw)``, ``padding (ph, pw)`` (symmetric).

Outputs keep their input's memory layout (``np.maximum`` of views allocates like its inputs;
the scatter writes into ``empty_like(x)``): after a convolution, whose outputs are
channel-major, every pass then reads its arrays in one order. The scatter hands ``dy`` to the
offsets in turn (``left``: what no earlier offset took), one compare, one multiply and one
subtract per offset, instead of keeping a mask of the windows already taken.

What runs when: with Numba (:mod:`nnflow.jit`; ``NNFLOW_NUMBA`` not ``"0"``), unpadded max
pooling of NumPy arrays laid out NCHW or channel-major (C-contiguous, or C-contiguous once
transposed to ``(C, N, H, W)``) runs kernels of :mod:`~nnflow.layers.pool_kernels` that do the
same arithmetic in one pass (bitwise the same results and layout): ``max_pool2d`` for 2x2
windows with stride 2 on even sizes (``MaxPool2d(2)``; other geometries keep ``np.maximum``,
faster than a general kernel), ``max_pool2d_scatter`` for any unpadded geometry (a 2x2 one for
that case). Padded pooling, other layouts, CuPy arrays, ``max_pool2d_gather`` and average
pooling run the NumPy formulation above. Inside the ConvNet training step of ``benchmarks/``
(batch 64, 32 channels of 24x24, float32, 2 cores; median of 60 calls) the kernels take the
forward from 2.3 to 1.4 ms and the scatter from 5.4 to 1.9 ms.

>>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), (2, 2), (2, 2), (0, 0))[0, 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""

from __future__ import annotations

import math

import numpy as np

from .. import ad
from ..ad.rules import Case, register_cases
from ..backend import get_array_module
from .pool_kernels import MAX_POOL_2X2, MAX_POOL_SCATTER, MAX_POOL_SCATTER_2X2

__all__ = [
    "max_pool2d",
    "max_pool2d_scatter",
    "max_pool2d_gather",
    "avg_pool2d",
    "avg_pool2d_transpose",
    "pool_output_size",
]


def pool_output_size(shape, kernel, stride, padding) -> tuple[int, int]:
    """``(Ho, Wo)`` of pooling an ``(N, C, H, W)`` input.

    >>> pool_output_size((1, 1, 7, 6), (3, 3), (2, 2), (1, 1))
    (4, 3)
    """
    return tuple((shape[2 + a] + 2 * padding[a] - kernel[a]) // stride[a] + 1 for a in (0, 1))


def _pad(x, padding, fill):
    if not any(padding):
        return x
    (ph, pw), xp = padding, get_array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)


def _offsets(kernel, stride, out):
    """``(i, j, rows, cols)`` slices of the padded input for each kernel offset."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out
    for i in range(kh):
        for j in range(kw):
            yield slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


def _winners(x, y, kernel, stride, padding):
    """For each kernel offset, ``(rows, cols, mask)``: where that offset holds the first
    maximum of its window (the masks partition the windows)."""
    padded = _pad(x, padding, -np.inf)
    offsets = list(_offsets(kernel, stride, y.shape[2:]))
    taken = None
    for k, (rows, cols) in enumerate(offsets):
        mask = padded[:, :, rows, cols] == y
        if taken is None:
            taken = mask
        elif k < len(offsets) - 1:
            mask &= ~taken
            taken |= mask
        else:  # the last offset wins wherever no earlier one did
            mask = ~taken
        yield rows, cols, mask


def _memory_order(x):
    """The axis order in which ``x (N, C, H, W)`` is C-contiguous: ``(0, 1, 2, 3)`` or the
    channel-major ``(1, 0, 2, 3)`` (the transpose is its own inverse); ``None`` otherwise."""
    if x.flags.c_contiguous:
        return (0, 1, 2, 3)
    if x.transpose(1, 0, 2, 3).flags.c_contiguous:
        return (1, 0, 2, 3)
    return None


def _tiles_2x2(shape, kernel, stride, padding) -> bool:
    """Whether the windows are 2x2 with stride 2, unpadded, tiling an even-sized (non-empty)
    input."""
    k = tuple(kernel) == (2, 2) and tuple(stride) == (2, 2) and not any(padding)
    return k and shape[2] % 2 == 0 and shape[3] % 2 == 0 and shape[3] > 0


@ad.primitive
def max_pool2d(x, kernel, stride, padding):
    """The maximum of each window (padding counts as ``-inf``).

    >>> max_pool2d(np.ones((2, 3, 5, 5)), (3, 3), (1, 1), (1, 1)).shape
    (2, 3, 5, 5)
    """
    out = pool_output_size(x.shape, kernel, stride, padding)
    fused = None
    if _tiles_2x2(x.shape, kernel, stride, padding):  # (dtypes: Kernel.get decides)
        fused = MAX_POOL_2X2.get(x)
    order = None if fused is None else _memory_order(x)
    if order is not None:  # one pass (Numba), y laid out in memory as x is
        y = np.empty(tuple(x.shape[a] for a in order[:2]) + out, x.dtype).transpose(order)
        fused(x.transpose(order), y.transpose(order))
        return y
    xp = get_array_module(x)
    padded = _pad(x, padding, -np.inf)
    views = [padded[:, :, rows, cols] for rows, cols in _offsets(kernel, stride, out)]
    if len(views) == 1:
        return views[0].copy(order="K")
    y = xp.maximum(views[0], views[1])  # laid out in memory as x is
    for view in views[2:]:
        xp.maximum(y, view, out=y)
    return y


@ad.primitive
def max_pool2d_scatter(dy, x, y, kernel, stride, padding):
    """``dy`` routed back to each window's winner: the gradient of ``max_pool2d`` w.r.t. ``x``.

    >>> x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    >>> max_pool2d_scatter(np.ones((1, 1, 1, 1)), x, np.array([[[[3.0]]]]), (2, 2), (2, 2),
    ...                    (0, 0))[0, 0].tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    """
    (ph, pw), (h, w) = padding, x.shape[2:]
    xp = get_array_module(dy)
    out = dy.shape[2:]
    # windows that tile the input exactly write every entry once: no zero fill, no adds
    tiles = stride == kernel and not any(padding) and (h, w) == (out[0] * kernel[0],
                                                                 out[1] * kernel[1])  # fmt: skip
    if tiles:  # laid out in memory as x is (the next op reads both)
        dx = xp.empty_like(x, dtype=dy.dtype)
    else:
        dx = xp.zeros((x.shape[0], x.shape[1], h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    fused = None
    if not any(padding) and dy.shape == y.shape:
        fused = MAX_POOL_SCATTER.get(dy, x, y)
    order = None if fused is None else _memory_order(x)
    if order is not None:  # one pass (Numba), the arithmetic below term for term
        one = dx.dtype.type(1)
        dy_, x_, y_, dx_ = (a.transpose(order) for a in (dy, x, y, dx))
        if tiles and _tiles_2x2(x.shape, kernel, stride, padding) and y_.flags.c_contiguous:
            MAX_POOL_SCATTER_2X2.compiled(dy_, x_, y_, dx_, one - one, one)
        else:
            fused(dy_, x_, y_, dx_, *kernel, *stride, tiles, one - one, one)
        return dx
    padded = _pad(x, padding, -np.inf)
    offsets = list(_offsets(kernel, stride, out))
    # ``left``: dy where no earlier offset won yet; each offset takes it where it holds the
    # maximum (the first maximum wins, as in PyTorch), the last one takes what is left
    # (``left`` laid out as ``y``: the passes below then read every array in one order)
    left = dy
    if len(offsets) > 1:
        left = xp.empty_like(y, dtype=dy.dtype)
        left[...] = dy
    for k, (rows, cols) in enumerate(offsets):
        target = dx[:, :, rows, cols]
        if k == len(offsets) - 1:
            if tiles:
                target[...] = left
            else:
                target += left
            break
        taken = left * (padded[:, :, rows, cols] == y)
        if tiles:
            target[...] = taken
        else:
            target += taken
        left -= taken  # exactly 0 where taken (for finite dy), unchanged elsewhere
    return dx[:, :, ph : ph + h, pw : pw + w] if ph or pw else dx


@ad.primitive
def max_pool2d_gather(g, x, y, kernel, stride, padding):
    """``g`` (shaped like ``x``) read at each window's winner: the transpose of the scatter.

    >>> x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    >>> float(max_pool2d_gather(np.arange(4.0).reshape(1, 1, 2, 2), x, np.array([[[[3.0]]]]),
    ...                         (2, 2), (2, 2), (0, 0))[0, 0, 0, 0])
    1.0
    """
    gp = _pad(g, padding, 0.0)
    out = get_array_module(g).zeros(y.shape, dtype=g.dtype)
    for rows, cols, mask in _winners(x, y, kernel, stride, padding):
        out += gp[:, :, rows, cols] * mask
    return out


@ad.primitive
def avg_pool2d(x, kernel, stride, padding):
    """The mean of each window, zero padding included in the count.

    >>> avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), (2, 2), (2, 2), (0, 0))[0, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    out = pool_output_size(x.shape, kernel, stride, padding)
    padded = _pad(x, padding, 0.0)
    y = None
    for rows, cols in _offsets(kernel, stride, out):
        view = padded[:, :, rows, cols]
        y = view.copy() if y is None else get_array_module(x).add(y, view, out=y)
    y *= 1.0 / math.prod(kernel)
    return y


@ad.primitive
def avg_pool2d_transpose(dy, input_size, kernel, stride, padding):
    """The transpose of ``avg_pool2d``: each ``dy / (kh kw)`` spread over its window.

    >>> avg_pool2d_transpose(np.ones((1, 1, 1, 1)), (2, 2), (2, 2), (2, 2), (0, 0))[0, 0].tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    (ph, pw), (h, w) = padding, input_size
    xp = get_array_module(dy)
    dx = xp.zeros(dy.shape[:2] + (h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    share = dy * (1.0 / math.prod(kernel))
    for rows, cols in _offsets(kernel, stride, dy.shape[2:]):
        dx[:, :, rows, cols] += share
    return dx[:, :, ph : ph + h, pw : pw + w] if ph or pw else dx


# -- rules ----------------------------------------------------------------------------------------
@ad.diffrule(max_pool2d, "x")
def _max_pool_dx(dy, y, x, kernel, stride, padding):
    return max_pool2d_scatter(dy, x, y, kernel, stride, padding)


@ad.diffrule(max_pool2d_scatter, "dy")
def _scatter_ddy(g, out, dy, x, y, kernel, stride, padding):
    return max_pool2d_gather(g, x, y, kernel, stride, padding)


@ad.diffrule(max_pool2d_gather, "g")
def _gather_dg(dz, out, g, x, y, kernel, stride, padding):
    return max_pool2d_scatter(dz, x, y, kernel, stride, padding)


for _fn in (max_pool2d_scatter, max_pool2d_gather):
    ad.nodiff(_fn, "x")
    ad.nodiff(_fn, "y")


@ad.diffrule(avg_pool2d, "x")
def _avg_pool_dx(dy, y, x, kernel, stride, padding):
    return avg_pool2d_transpose(dy, x.shape[2:], kernel, stride, padding)


@ad.diffrule(avg_pool2d_transpose, "dy")
def _avg_pool_transpose_ddy(g, out, dy, input_size, kernel, stride, padding):
    return avg_pool2d(g, kernel, stride, padding)


# -- sample cases ---------------------------------------------------------------------------------
def _cases() -> list[Case]:
    rng = np.random.default_rng(0)
    cases = []
    for name, (shape, geo) in {
        "tiles": ((2, 2, 4, 6), ((2, 2), (2, 2), (0, 0))),
        "overlap": ((2, 1, 5, 5), ((3, 3), (2, 2), (0, 0))),  # the general Numba scatter
        "overlap-pad": ((1, 2, 5, 5), ((3, 3), (2, 2), (1, 1))),
        "uneven": ((1, 1, 5, 7), ((2, 3), (1, 2), (1, 0))),
    }.items():
        x = rng.normal(size=shape)
        y = max_pool2d(x, *geo)
        dy, g = rng.normal(size=y.shape), rng.normal(size=shape)
        cases += [
            Case(max_pool2d, lambda x, geo=geo: max_pool2d(x, *geo), (x,), name),
            Case(
                max_pool2d_scatter,
                lambda dy, x=x, y=y, geo=geo: max_pool2d_scatter(dy, x, y, *geo),
                (dy,),
                name,
            ),  # fmt: skip
            Case(
                max_pool2d_gather,
                lambda g, x=x, y=y, geo=geo: max_pool2d_gather(g, x, y, *geo),
                (g,),
                name,
            ),  # fmt: skip
            Case(avg_pool2d, lambda x, geo=geo: avg_pool2d(x, *geo), (x,), name),
            Case(
                avg_pool2d_transpose,
                lambda dy, s=shape[2:], geo=geo: avg_pool2d_transpose(dy, s, *geo),
                (dy,),
                name,
            ),  # fmt: skip
        ]
    return cases


register_cases(_cases())
