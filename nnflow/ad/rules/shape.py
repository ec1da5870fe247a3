"""Derivative rules of the shape functions: reshaping, joining, tiling, padding, flipping.

All of them are linear in their array argument, so forward mode evaluates the function itself
on the tangent (``linear=``), and each reverse rule is the transposed data movement, written
with functions that have rules themselves (so it is traced and differentiable again).
``concatenate`` and ``stack`` take a list of arrays and return a list of cotangents.
Functions that are compositions of others (``hstack``, ``split``, ``atleast_2d``...) are
decompositions: traced through, with no rule of their own.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ..registry import register, register_decomposition
from .cases import Case, sample
from .indexing import _scatter_add, _shape, _sum_to


def _order(a, order: str) -> str:
    """Resolve ``order="A"/"K"`` of reshape/ravel from the array's layout (tracers: C)."""
    if order in ("A", "K"):
        flags = getattr(a, "flags", None)
        return "F" if flags is not None and flags.f_contiguous and not flags.c_contiguous else "C"
    return order


def _inverse_axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort([operator.index(ax) % ndim for ax in axes]))


def _negate(shift):
    return tuple(-s for s in shift) if isinstance(shift, (list, tuple)) else -shift


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple, np.ndarray)) else (x,)


# ----- one-line rules: fn -> (array argument, rule(dy, y, *args, **kwargs)) -------------------

RULES = {
    np.reshape: (
        "a",
        lambda dy, y, a, shape=None, order="C", **kw: np.reshape(
            dy, _shape(a), order=_order(a, order)
        ),
    ),
    np.ravel: ("a", lambda dy, y, a, order="C": np.reshape(dy, _shape(a), order=_order(a, order))),
    np.transpose: (
        "a",
        lambda dy, y, a, axes=None: np.transpose(
            dy, None if axes is None else _inverse_axes(axes, len(_shape(a)))
        ),
    ),
    np.swapaxes: ("a", lambda dy, y, a, axis1, axis2: np.swapaxes(dy, axis1, axis2)),
    np.moveaxis: ("a", lambda dy, y, a, source, destination: np.moveaxis(dy, destination, source)),
    np.squeeze: ("a", lambda dy, y, a, axis=None: np.reshape(dy, _shape(a))),
    np.expand_dims: ("a", lambda dy, y, a, axis: np.reshape(dy, _shape(a))),
    np.broadcast_to: ("array", lambda dy, y, array, shape, subok=False: _sum_to(dy, _shape(array))),
    np.flip: ("m", lambda dy, y, m, axis=None: np.flip(dy, axis)),
    np.roll: ("a", lambda dy, y, a, shift, axis=None: np.roll(dy, _negate(shift), axis)),
    np.triu: ("m", lambda dy, y, m, k=0: _sum_to(np.triu(dy, k), _shape(m))),  # 1-d m: rows
    np.tril: ("m", lambda dy, y, m, k=0: _sum_to(np.tril(dy, k), _shape(m))),
    np.copy: ("a", lambda dy, y, a, order="K", subok=False: dy),
}
NODIFF = {np.roll: ("shift",), np.repeat: ("repeats",), np.tile: ("reps",)}


# ----- rules that need more than a line ---------------------------------------------------------


def _concatenate_rule(dy, y, arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    shapes = [_shape(x) for x in arrays]
    grads, start = [], 0
    if axis is None:  # the inputs were flattened
        for shape in shapes:
            size = math.prod(shape)
            grads.append(np.reshape(dy[start : start + size], shape))
            start += size
        return grads
    axis = operator.index(axis) % len(shapes[0])
    for shape in shapes:
        grads.append(dy[(slice(None),) * axis + (slice(start, start + shape[axis]),)])
        start += shape[axis]
    return grads


def _stack_rule(dy, y, arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    axis = operator.index(axis) % len(_shape(dy))
    return [dy[(slice(None),) * axis + (i,)] for i in range(len(arrays))]


def _tile_rule(dy, y, A, reps):
    shape, reps = _shape(A), _as_tuple(reps)
    d = max(len(shape), len(reps))
    padded = (1,) * (d - len(shape)) + shape
    reps = (1,) * (d - len(reps)) + tuple(int(r) for r in reps)
    blocks = np.reshape(dy, tuple(n for pair in zip(reps, padded, strict=True) for n in pair))
    return np.reshape(np.sum(blocks, axis=tuple(range(0, 2 * d, 2))), shape)


def _repeat_rule(dy, y, a, repeats, axis=None):
    shape = _shape(a)
    base = (math.prod(shape),) if axis is None else shape
    axis = 0 if axis is None else operator.index(axis) % len(shape)
    repeats = np.asarray(repeats)  # static (nodiff)
    if repeats.size == 1:  # every element repeated k times: sum the k copies
        k = int(repeats.reshape(()))
        split = np.reshape(dy, base[:axis] + (base[axis], k) + base[axis + 1 :])
        return np.reshape(np.sum(split, axis=axis + 1), shape)
    source = np.repeat(np.arange(base[axis]), repeats)  # element each output slot came from
    key = (slice(None),) * axis + (source,)
    return np.reshape(_scatter_add(base, key, dy), shape)


_INDEX_MODES = ("edge", "reflect", "symmetric", "wrap")  # every padded value copies one input


def _pad_widths(pad_width, ndim: int) -> list[list[int]]:
    if isinstance(pad_width, dict):
        widths = [[0, 0] for _ in range(ndim)]
        for ax, w in pad_width.items():
            widths[ax] = np.broadcast_to(w, (2,)).tolist()
        return widths
    return np.broadcast_to(np.asarray(pad_width, dtype=int), (ndim, 2)).tolist()


def _pad_mode(mode, kwargs) -> str:
    if mode in ("constant", "empty"):
        return "constant"
    if mode in _INDEX_MODES and kwargs.get("reflect_type", "even") == "even":
        return "index"
    raise NotImplementedError(
        f"np.pad(mode={mode!r}, {kwargs}) has no derivative rule in nnflow; supported modes are "
        f"'constant', 'edge', 'wrap', and 'reflect'/'symmetric' with reflect_type='even'"
    )


def _pad_rule(dy, y, array, pad_width, mode="constant", **kwargs):
    shape = _shape(array)
    widths = _pad_widths(pad_width, len(shape))
    if _pad_mode(mode, kwargs) == "constant":
        inner = zip(widths, shape, strict=True)
        return dy[tuple(slice(before, before + n) for (before, _), n in inner)]
    size = math.prod(shape)
    source = np.pad(np.arange(size).reshape(shape), widths, mode=mode)  # static, like dy
    return np.reshape(_scatter_add((size,), source, dy), shape)


def _pad_jvp(t, y, array, pad_width, mode="constant", **kwargs):
    if _pad_mode(mode, kwargs) == "constant":  # affine: constant_values do not move with t
        return np.pad(t, pad_width)
    return np.pad(t, pad_width, mode=mode, **kwargs)


for _fn, (_arg, _rule) in RULES.items():
    register(_fn, {_arg: _rule}, linear=(_arg,), nodiff=NODIFF.get(_fn, ()))
for _fn in (np.concatenate, np.stack):
    _rule = _concatenate_rule if _fn is np.concatenate else _stack_rule
    register(_fn, {"arrays": _rule}, sequences=("arrays",), linear=("arrays",))
register(np.tile, {"A": _tile_rule}, linear=("A",), nodiff=NODIFF[np.tile])
register(np.repeat, {"a": _repeat_rule}, linear=("a",), nodiff=NODIFF[np.repeat])
register(np.pad, {"array": _pad_rule}, jvps={"array": _pad_jvp}, nodiff=("pad_width",))


# ----- decompositions: traced through the functions above -----------------------------------------


def _atleast(ndim: int):
    def pad_shape(shape):
        if len(shape) >= ndim:
            return shape
        if ndim == 3 and len(shape) > 0:  # (N,) -> (1, N, 1), (M, N) -> (M, N, 1)
            return ((1,) if len(shape) == 1 else ()) + shape + (1,)
        return (1,) * (ndim - len(shape)) + shape

    def impl(*arys):
        out = tuple(
            x if len(_shape(x)) >= ndim else np.reshape(x, pad_shape(_shape(x))) for x in arys
        )
        return out[0] if len(out) == 1 else out

    return impl


_atleast_1d, _atleast_2d, _atleast_3d = _atleast(1), _atleast(2), _atleast(3)


def _hstack(tup, *, dtype=None, casting="same_kind"):
    arrays = [_atleast_1d(x) for x in tup]
    axis = 0 if arrays and len(_shape(arrays[0])) == 1 else 1
    return np.concatenate(arrays, axis=axis, dtype=dtype, casting=casting)


def _column_stack(tup):
    arrays = [np.reshape(x, (-1, 1)) if len(_shape(x)) < 2 else x for x in tup]
    return np.concatenate(arrays, axis=1)


def _array_split(ary, indices_or_sections, axis=0, *, equal=False):
    shape = _shape(ary)
    axis = operator.index(axis) % len(shape)
    n = shape[axis]
    if np.ndim(indices_or_sections) == 0:
        sections = operator.index(indices_or_sections)
        if equal and n % sections:
            raise ValueError("array split does not result in an equal division")
        q, r = divmod(n, sections)
        cuts = list(np.cumsum([0] + [q + 1] * r + [q] * (sections - r)))
    else:
        cuts = [0] + list(indices_or_sections) + [n]
    return [
        ary[(slice(None),) * axis + (slice(int(start), int(stop)),)]
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True)
    ]


DECOMPOSITIONS = {
    np.atleast_1d: _atleast_1d,
    np.atleast_2d: _atleast_2d,
    np.atleast_3d: _atleast_3d,
    np.hstack: _hstack,
    np.vstack: lambda tup, **kw: np.concatenate([_atleast_2d(x) for x in tup], axis=0, **kw),
    np.dstack: lambda tup: np.concatenate([_atleast_3d(x) for x in tup], axis=2),
    np.column_stack: _column_stack,
    np.array_split: _array_split,
    np.split: lambda ary, indices_or_sections, axis=0: _array_split(
        ary, indices_or_sections, axis, equal=True
    ),
    np.hsplit: lambda ary, indices_or_sections: _array_split(
        ary, indices_or_sections, 1 if len(_shape(ary)) > 1 else 0, equal=True
    ),
    np.vsplit: lambda ary, indices_or_sections: _array_split(
        ary, indices_or_sections, 0, equal=True
    ),
}
for _fn, _impl in DECOMPOSITIONS.items():
    register_decomposition(_fn, _impl)


# ----- sample inputs ---------------------------------------------------------------------------


def _case(fn, call, *shapes, name=""):
    return Case(fn, call, tuple(sample(*s) for s in shapes), name)


CASES = [
    _case(np.reshape, lambda a: np.reshape(a, (4, 3)), (3, 4), name="matrix"),
    _case(np.reshape, lambda a: np.reshape(a, (-1,), order="F"), (2, 3, 4), name="order-F"),
    _case(np.reshape, lambda a: a.reshape(2, 1, 2), (4,), name="method"),
    _case(np.ravel, np.ravel, (2, 3, 4), name="tensor"),
    _case(np.ravel, lambda a: np.ravel(a, order="F"), (3, 4), name="order-F"),
    _case(np.transpose, np.transpose, (3, 4), name="matrix"),
    _case(np.transpose, lambda a: np.transpose(a, (2, 0, 1)), (2, 3, 4), name="axes"),
    _case(np.transpose, lambda a: np.transpose(a, (-1, 0, -2)), (2, 3, 4), name="negative-axes"),
    _case(np.swapaxes, lambda a: np.swapaxes(a, 0, -1), (2, 3, 4)),
    _case(np.moveaxis, lambda a: np.moveaxis(a, 0, -1), (2, 3, 4), name="one"),
    _case(np.moveaxis, lambda a: np.moveaxis(a, (0, 1), (2, 0)), (2, 3, 4), name="several"),
    _case(np.squeeze, np.squeeze, (1, 3, 1), name="all"),
    _case(np.squeeze, lambda a: np.squeeze(a, axis=2), (1, 3, 1), name="axis"),
    _case(np.expand_dims, lambda a: np.expand_dims(a, 1), (3, 4), name="axis"),
    _case(np.expand_dims, lambda a: np.expand_dims(a, (0, -1)), (3,), name="axes"),
    _case(np.broadcast_to, lambda a: np.broadcast_to(a, (2, 3, 4)), (3, 1), name="expand"),
    _case(np.broadcast_to, lambda a: np.broadcast_to(a, (5, 3)), (), name="scalar"),
    _case(np.concatenate, lambda a, b: np.concatenate([a, b]), (2, 3), (4, 3), name="axis0"),
    _case(
        np.concatenate,
        lambda a, b, c: np.concatenate((a, b, c), axis=-1),
        (2, 3),
        (2, 1),
        (2, 2),
        name="axis-1",
    ),
    _case(
        np.concatenate, lambda a, b: np.concatenate([a, b], axis=None), (2, 3), (4,), name="flat"
    ),
    Case(
        np.concatenate,
        lambda a: np.concatenate([a, np.ones((1, 3)), a]),
        (sample(2, 3),),
        "constant-and-reuse",
    ),
    _case(np.stack, lambda a, b: np.stack([a, b]), (2, 3), (2, 3), name="axis0"),
    _case(
        np.stack,
        lambda a, b, c: np.stack((a, b, c), axis=-1),
        (2, 3),
        (2, 3),
        (2, 3),
        name="axis-1",
    ),
    _case(np.tile, lambda a: np.tile(a, 3), (2,), name="vector"),
    _case(np.tile, lambda a: np.tile(a, (2, 1, 3)), (2, 3), name="more-reps"),
    _case(np.tile, lambda a: np.tile(a, 2), (2, 3), name="fewer-reps"),
    _case(np.repeat, lambda a: np.repeat(a, 3), (2, 3), name="flat"),
    _case(np.repeat, lambda a: np.repeat(a, 2, axis=-1), (2, 3), name="axis"),
    _case(np.repeat, lambda a: np.repeat(a, [2, 0, 3], axis=1), (2, 3), name="array-repeats"),
    _case(np.repeat, lambda a: np.repeat(a, np.array([1, 3, 0, 2])), (2, 2), name="array-flat"),
    _case(np.pad, lambda a: np.pad(a, 2), (3, 4), name="int"),
    _case(np.pad, lambda a: np.pad(a, (1, 2), constant_values=5.0), (3, 4), name="pair"),
    _case(np.pad, lambda a: np.pad(a, ((0, 1), (2, 0), (1, 1))), (2, 3, 4), name="per-axis"),
    _case(np.pad, lambda a: np.pad(a, {1: (2, 1)}), (2, 3), name="dict"),
    _case(np.pad, lambda a: np.pad(a, (2, 3), mode="reflect"), (4, 3), name="reflect"),
    _case(np.pad, lambda a: np.pad(a, 2, mode="edge"), (2, 3), name="edge"),
    _case(np.pad, lambda a: np.pad(a, ((1, 5), (0, 2)), mode="wrap"), (2, 3), name="wrap"),
    _case(np.pad, lambda a: np.pad(a, 3, mode="symmetric"), (2, 3), name="symmetric"),
    _case(np.flip, np.flip, (2, 3), name="all"),
    _case(np.flip, lambda a: np.flip(a, axis=(0, 2)), (2, 3, 4), name="axes"),
    _case(np.roll, lambda a: np.roll(a, 2), (3, 4), name="flat"),
    _case(np.roll, lambda a: np.roll(a, -1, axis=1), (3, 4), name="axis"),
    _case(np.roll, lambda a: np.roll(a, (1, 5), axis=(0, 1)), (3, 4), name="tuple"),
    _case(np.triu, np.triu, (4, 4), name="square"),
    _case(np.triu, lambda a: np.triu(a, k=1), (2, 3, 4), name="batched-k"),
    _case(np.triu, np.triu, (3,), name="vector"),
    _case(np.tril, lambda a: np.tril(a, -1), (4, 3), name="k"),
    _case(np.tril, np.tril, (2, 3, 3), name="batched"),
    _case(np.copy, np.copy, (3, 4)),
    _case(np.atleast_1d, np.atleast_1d, (), name="scalar"),
    _case(
        np.atleast_2d,
        lambda a, b: np.concatenate(np.atleast_2d(a, b), axis=None),
        (3,),
        (2, 2),
        name="several",
    ),
    _case(np.atleast_3d, np.atleast_3d, (2, 3), name="matrix"),
    _case(np.hstack, lambda a, b: np.hstack([a, b]), (2,), (3,), name="vectors"),
    _case(np.hstack, lambda a, b: np.hstack((a, b)), (2, 3), (2, 1), name="matrices"),
    _case(np.vstack, lambda a, b: np.vstack([a, b]), (3,), (2, 3)),
    _case(np.dstack, lambda a, b: np.dstack([a, b]), (2, 3), (2, 3)),
    _case(np.column_stack, lambda a, b: np.column_stack([a, b]), (3,), (3, 2)),
    _case(np.split, lambda a: np.split(a, 2)[1] * 2 + np.split(a, 2)[0], (4, 3), name="sections"),
    _case(np.split, lambda a: np.split(a, [1, 3], axis=1)[1], (2, 5), name="indices"),
    _case(np.array_split, lambda a: np.array_split(a, 3)[0], (7,), name="uneven"),
    _case(np.hsplit, lambda a: np.hsplit(a, 2)[1], (2, 4)),
    _case(np.vsplit, lambda a: np.vsplit(a, [1])[1], (3, 2)),
]
