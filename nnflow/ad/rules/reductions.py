"""Reductions with axis/keepdims: sum, mean, prod, max/min, var/std, cumsum/cumprod, logsumexp.

A reduction's cotangent is the output cotangent with the reduced axes put back (``_expand``)
and broadcast to the input's shape.
"""

from __future__ import annotations

import numpy as np

from ..backward import UNIT_REDUCTIONS
from ..registry import primitive, register
from .cases import Case, positive, sample


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return tuple(sorted(int(a) % ndim for a in axis)) if ndim else ()


def _expand(dy, a, axis, keepdims):
    """``dy`` with the reduced axes restored (size 1), ready to broadcast against ``a``."""
    if keepdims is True or np.ndim(a) == 0:
        return dy
    return np.expand_dims(dy, _axes(axis, np.ndim(a))) if _axes(axis, np.ndim(a)) else dy


def _count(a, axis) -> int:
    shape = np.shape(a)
    return int(np.prod([shape[i] for i in _axes(axis, len(shape))], dtype=np.int64))


def _sum_a(dy, y, a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=True):
    g = np.broadcast_to(_expand(dy, a, axis, keepdims), np.shape(a))
    return g if where is True else np.where(where, g, 0)  # entries left out get nothing


def _mean_a(dy, y, a, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    if where is True:
        return np.broadcast_to(_expand(dy, a, axis, keepdims) / _count(a, axis), np.shape(a))
    mask = np.broadcast_to(where, np.shape(a))  # the mean of the selected entries
    count = np.sum(mask, axis=_axes(axis, np.ndim(a)), keepdims=True)
    return np.where(mask, _expand(dy, a, axis, keepdims) / count, 0)


def _extremum_a(dy, y, a, axis=None, out=None, keepdims=False, **_):
    """The gradient goes to the maximal entries, split evenly between ties."""
    winners = a == _expand(y, a, axis, keepdims)
    share = winners / np.sum(winners, axis=_axes(axis, np.ndim(a)), keepdims=True)
    return _expand(dy, a, axis, keepdims) * share


def _prod_others(a, axis):
    """Product of all other entries along ``axis`` (no division, so zeros are fine)."""
    axes = _axes(axis, np.ndim(a))
    moved = np.moveaxis(a, axes, tuple(range(-len(axes), 0)))
    kept = np.shape(moved)[: np.ndim(a) - len(axes)]
    flat = np.reshape(moved, kept + (-1,))
    ones = np.ones_like(flat[..., :1])
    left = np.cumprod(np.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    right = np.flip(
        np.cumprod(np.concatenate([ones, np.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1
    )
    others = np.reshape(left * right, np.shape(moved))
    return np.moveaxis(others, tuple(range(-len(axes), 0)), axes)


def _prod_a(dy, y, a, axis=None, dtype=None, out=None, keepdims=False, **_):
    if np.ndim(a) == 0:
        return dy
    return _expand(dy, a, axis, keepdims) * _prod_others(a, axis)


def _var_a(dy, y, a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **_):
    centred = a - np.mean(a, axis=axis, keepdims=True)
    return _expand(dy, a, axis, keepdims) * centred * (2.0 / (_count(a, axis) - ddof))


def _std_a(dy, y, a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **_):
    centred = a - np.mean(a, axis=axis, keepdims=True)
    scale = _expand(y, a, axis, keepdims) * (_count(a, axis) - ddof)
    return _expand(dy, a, axis, keepdims) * centred / scale


def _reverse_cumsum(g, axis):
    return np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis)


def _cumsum_a(dy, y, a, axis=None, dtype=None, out=None):
    if axis is None:
        return np.reshape(_reverse_cumsum(dy, 0), np.shape(a))
    return _reverse_cumsum(dy, axis)


def _cumprod_a(dy, y, a, axis=None, dtype=None, out=None):
    """Zero-safe: ``d a_i = prod(a[:i]) * sum_{j>=i} dy_j prod(a[i+1:j+1])``.

    The inner products form an ``n x n`` triangle per position (memory O(n^2) along the
    axis), which avoids dividing by ``a``.
    """
    flat = axis is None
    x = np.ravel(a) if flat else np.moveaxis(a, axis, -1)
    g = dy if flat else np.moveaxis(dy, axis, -1)
    n = np.shape(x)[-1]
    later = np.arange(n)[None, :] > np.arange(n)[:, None]  # [i, j]: j > i
    span = np.cumprod(np.where(later, x[..., None, :], 1), axis=-1)  # prod a[i+1:j+1]
    tail = np.sum(np.where(~later & ~np.eye(n, dtype=bool), 0, span) * g[..., None, :], axis=-1)
    head = np.cumprod(np.concatenate([np.ones_like(x[..., :1]), x[..., :-1]], axis=-1), axis=-1)
    result = head * tail
    return np.reshape(result, np.shape(a)) if flat else np.moveaxis(result, -1, axis)


@primitive
def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x), axis))`` computed without overflow.

    >>> float(logsumexp(np.array([1000.0, 1000.0])))  # doctest: +ELLIPSIS
    1000.693...
    """
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _logsumexp_x(dy, y, x, axis=None, keepdims=False):
    return _expand(dy, x, axis, keepdims) * np.exp(x - _expand(y, x, axis, keepdims))


register(np.sum, {"a": _sum_a}, linear=("a",))
UNIT_REDUCTIONS.add(_sum_a)  # the gradient of sum(a) for a cotangent of ones is ones
register(np.mean, {"a": _mean_a}, linear=("a",))
for _fn in (np.max, np.amax, np.min, np.amin):
    register(_fn, {"a": _extremum_a})
register(np.prod, {"a": _prod_a})
register(np.var, {"a": _var_a})
register(np.std, {"a": _std_a})
register(np.cumsum, {"a": _cumsum_a}, linear=("a",))
register(np.cumprod, {"a": _cumprod_a})
register(logsumexp, {"x": _logsumexp_x})


def _reduction_cases(fn, make=sample, order2=True, **extra):
    def call(axis=None, keepdims=False):
        return lambda a: fn(a, axis=axis, keepdims=keepdims, **extra)

    return [
        Case(fn, call(), (make(3, 4),), "all", order2),
        Case(fn, call(0), (make(3, 4),), "axis0", order2),
        Case(fn, call(-1, True), (make(2, 3, 4),), "last-keepdims", order2),
        Case(fn, call((0, 2)), (make(2, 3, 4),), "two-axes", order2),
        Case(fn, call(), (make(),), "scalar", order2),
    ]


# inputs where one entry of ``a - _ZERO_AT_1`` is exactly zero (no division allowed)
_AT_ZERO = sample(3, 2)
_ZERO_AT_1 = np.where(np.arange(3)[:, None] == 1, _AT_ZERO, 0.0)

_MASK = np.arange(12).reshape(3, 4) % 3 != 1  # every row and column keeps an entry

CASES = [
    *_reduction_cases(np.sum),
    Case(np.sum, lambda a: np.sum(a, where=_MASK), (sample(3, 4),), "where"),
    Case(np.sum, lambda a: np.sum(a, axis=1, where=_MASK[0]), (sample(3, 4),), "where-axis"),
    *_reduction_cases(np.mean),
    Case(np.mean, lambda a: np.mean(a, where=_MASK), (sample(3, 4),), "where"),
    Case(np.mean, lambda a: np.mean(a, axis=0, where=_MASK), (sample(3, 4),), "where-axis"),
    *_reduction_cases(np.prod, order2=True),
    Case(np.prod, lambda a: np.prod(a - _ZERO_AT_1, axis=0), (_AT_ZERO,), "exact-zero"),
    *[c for fn in (np.max, np.amax, np.min, np.amin) for c in _reduction_cases(fn)],
    Case(np.max, lambda a: np.max(np.concatenate([a, a]), axis=0), (sample(3),), "ties", False),
    *_reduction_cases(np.var),
    *_reduction_cases(np.var, ddof=1)[:3],
    *_reduction_cases(np.std, positive)[:4],
    *_reduction_cases(np.std, ddof=1)[:3],
    Case(np.cumsum, lambda a: np.cumsum(a), (sample(3, 4),), "flat"),
    Case(np.cumsum, lambda a: np.cumsum(a, axis=1), (sample(3, 4),), "axis1"),
    Case(np.cumsum, lambda a: a.cumsum(axis=0), (sample(2, 3, 2),), "method"),
    Case(np.cumprod, lambda a: np.cumprod(a), (positive(2, 3),), "flat"),
    Case(np.cumprod, lambda a: np.cumprod(a, axis=-1), (positive(3, 4),), "axis-1"),
    Case(np.cumprod, lambda a: np.cumprod(a - _ZERO_AT_1, axis=0), (_AT_ZERO,), "exact-zero"),
    Case(logsumexp, lambda a: logsumexp(a), (sample(3, 4),), "all"),
    Case(logsumexp, lambda a: logsumexp(a, axis=1, keepdims=True), (sample(3, 4),), "keepdims"),
    Case(logsumexp, lambda a: logsumexp(a * 100, axis=0), (sample(3, 4),), "large", atol=1e-5),
]
