"""Derivative rules of indexing: ``x[key]``, the functional ``setitem``, ``take`` and friends.

Every index kind NumPy knows (ints, slices with any step, ``...``, ``None``, integer arrays,
boolean masks and mixtures of them) goes through one pair of mutually transposed primitives:

- ``operator.getitem(a, key)``, whose rule scatters the cotangent back with
- ``_scatter_add(shape, key, values)``: zeros of ``shape`` with ``values`` added at ``key``
  (``np.add.at`` semantics, so repeated integer indices accumulate), whose rule is ``getitem``.

Each is the other's derivative, so gradients of any order stay on the tape. ``setitem`` is the
out-of-place assignment ``Tracer.__setitem__`` records. The key is never differentiated.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ...backend import get_array_module
from ..registry import primitive, register
from .cases import Case, sample

__all__ = ["setitem"]

_STATIC = (int, bool, slice, type(None), type(Ellipsis), np.ndarray, np.generic)


def _shape(a) -> tuple[int, ...]:
    """The static shape of an array, a tracer or a Python scalar."""
    shape = getattr(a, "shape", None)
    return tuple(np.shape(a) if shape is None else shape)


def _sum_to(x, shape):
    """Sum ``x`` down to ``shape`` (the inverse of broadcasting ``shape`` to ``x``'s shape)."""
    xshape, shape = _shape(x), tuple(shape)
    if xshape == shape:
        return x
    lead = len(xshape) - len(shape)
    axes = tuple(range(max(lead, 0))) + tuple(
        i + lead for i, n in enumerate(shape) if i + lead >= 0 and n == 1 and xshape[i + lead] != 1
    )
    if axes:
        x = np.sum(x, axis=axes, keepdims=True)
    return np.reshape(x, shape)


def _parts(key) -> tuple:
    return key if type(key) is tuple else (key,)


def _may_repeat(key) -> bool:
    """Whether ``key`` holds integer index arrays, the only kind that can repeat positions."""
    for k in _parts(key):
        if isinstance(k, (list, tuple)):
            return True
        dtype = getattr(k, "dtype", None)
        if dtype is not None and len(_shape(k)) > 0 and dtype.kind != "b":
            return True
    return False


def _is_static(k) -> bool:
    if isinstance(k, (list, tuple)):
        return all(_is_static(e) for e in k)
    return isinstance(k, _STATIC)


def _key_like(key, like):
    """``key`` with static NumPy index arrays moved to ``like``'s device (for CuPy)."""
    xp = get_array_module(like)
    if xp is np:
        return key
    parts = tuple(xp.asarray(k) if isinstance(k, (np.ndarray, list)) else k for k in _parts(key))
    return parts if type(key) is tuple else parts[0]


# ----- the two primitives --------------------------------------------------------------------


@primitive
def _scatter_add(shape, key, values):
    """Zeros of ``shape`` (``values``' dtype) with ``values`` added at ``key``, repeats summed.

    >>> _scatter_add((3,), ([0, 2, 0],), np.array([1.0, 2.0, 3.0]))
    array([4., 0., 2.])
    """
    out = np.zeros_like(values, shape=shape)
    key = _key_like(key, out)
    if _may_repeat(key):
        np.add.at(out, key, values)
    else:  # basic indexing and boolean masks never repeat a position: plain assignment
        out[key] = values
    return out


@primitive
def setitem(x, key, value):
    """A copy of ``x`` with ``x[key] = value`` (NumPy semantics: ``value`` is broadcast).

    This is what ``tracer[key] = value`` records, so assignment stays differentiable.

    >>> setitem(np.zeros(3), 1, 5.0)
    array([0., 5., 0.])
    """
    out = x.copy()
    out[_key_like(key, out)] = value
    return out


def _last_writes(shape, key):
    """Where ``x[key] = v`` writes several values to one position, NumPy keeps the last one:
    a static mask over ``x[key]`` of the writes that survive, or ``None`` when all do."""
    if not (_may_repeat(key) and _is_static(key)):
        return None
    picked = np.empty(shape, dtype=bool)[key].shape
    ids = np.arange(math.prod(picked)).reshape(picked)
    tags = np.full(shape, -1, dtype=ids.dtype)
    tags[key] = ids
    won = tags[key] == ids
    return None if won.all() else won


def _setitem_dvalue(dy, y, x, key, value):
    g = dy[key]
    won = _last_writes(_shape(x), key)
    if won is not None:
        g = g * get_array_module(dy).asarray(won)
    return _sum_to(g, _shape(value))


def _take_key(shape, indices, axis, mode):
    """The ``getitem`` key that ``np.take(a, indices, axis, mode=mode)`` reads with."""
    if isinstance(indices, (list, tuple)):
        indices = np.asarray(indices)
    n = math.prod(shape) if axis is None else shape[axis]
    if mode == "wrap":
        indices = np.mod(indices, n)
    elif mode == "clip":
        indices = np.clip(indices, 0, n - 1)
    return (indices,) if axis is None else (slice(None),) * axis + (indices,)


def _take_rule(dy, y, a, indices, axis=None, out=None, mode="raise"):
    shape = _shape(a)
    if axis is None:
        key = _take_key(shape, indices, None, mode)
        return np.reshape(_scatter_add((math.prod(shape),), key, dy), shape)
    axis = operator.index(axis) % len(shape)
    return _scatter_add(shape, _take_key(shape, indices, axis, mode), dy)


def _along_axis_key(shape, indices, axis):
    """The fancy index ``np.take_along_axis`` builds (``arr[key]`` is its result)."""
    ndim = len(_shape(indices))
    xp = get_array_module(indices)  # the aranges on the indices' device: no copy per step
    key = []
    for dim, n in enumerate(shape):
        if dim == axis:
            key.append(indices)
        else:
            key.append(xp.arange(n).reshape((1,) * dim + (-1,) + (1,) * (ndim - dim - 1)))
    return tuple(key)


def _take_along_axis_rule(dy, y, arr, indices, axis=-1):
    shape = _shape(arr)
    if axis is None:
        return np.reshape(_scatter_add((math.prod(shape),), (indices,), dy), shape)
    key = _along_axis_key(shape, indices, operator.index(axis) % len(shape))
    return _scatter_add(shape, key, dy)


# ----- the table: fn -> ({arg: reverse rule}, linear args, nodiff args) ------------------------

RULES = {
    operator.getitem: ({"a": lambda dy, y, a, b: _scatter_add(_shape(a), b, dy)}, ("a",), ("b",)),
    _scatter_add: (
        {"values": lambda g, y, shape, key, values: _sum_to(g[key], _shape(values))},
        ("values",),
        ("shape", "key"),
    ),
    setitem: (
        {"x": lambda dy, y, x, key, value: setitem(dy, key, 0), "value": _setitem_dvalue},
        (),  # affine, not linear, in each of x and value: forward rules below
        ("key",),
    ),
    np.take: ({"a": _take_rule}, ("a",), ("indices",)),
    np.take_along_axis: ({"arr": _take_along_axis_rule}, ("arr",), ("indices",)),
}

JVPS = {
    setitem: {
        "x": lambda t, y, x, key, value: setitem(t, key, 0),
        "value": lambda t, y, x, key, value: setitem(np.zeros_like(y), key, t),
    },
}

for _fn, (_rules, _linear, _nodiff) in RULES.items():
    register(_fn, _rules, jvps=JVPS.get(_fn), linear=_linear, nodiff=_nodiff)


# ----- sample inputs ---------------------------------------------------------------------------

_A = sample(4, 5, 6)
_MASK = sample(4, 5, 6, seed=1) > 0
_ROWS = np.array([True, False, True, True, False])


def _assign(x, v):
    x = np.copy(x)
    x[1:3, ::2] = v  # the operator syntax, recorded through Tracer.__setitem__
    return x


def _getitem_case(key, name, a=_A):
    return Case(operator.getitem, lambda a: a[key], (a,), name)


CASES = [
    _getitem_case(1, "int"),
    _getitem_case((-1, 2), "negative-ints"),
    _getitem_case((1, 2, 3), "scalar"),
    _getitem_case(slice(1, 3), "slice"),
    _getitem_case((slice(None, None, 2), slice(1, None, 2)), "step-slices"),
    _getitem_case((slice(None, None, -1), slice(3, 0, -2)), "negative-steps"),
    _getitem_case((Ellipsis, 1), "ellipsis"),
    _getitem_case((None, slice(None), np.newaxis, 2), "newaxis"),
    _getitem_case(np.array([0, 2, 2, 0, 2]), "repeated-int-array"),
    _getitem_case([-1, 0, -1], "negative-int-list"),
    _getitem_case((slice(None), [1, 1, 4], [0, 5, 5]), "adjacent-int-arrays"),
    _getitem_case((np.array([[0, 1], [1, 3]]), slice(None), np.array([2, 2])), "split-int-arrays"),
    _getitem_case(_MASK, "full-mask"),
    _getitem_case((slice(None), _ROWS), "partial-mask"),
    _getitem_case((slice(1, None), [0, 0, 3], slice(None, None, -1)), "mixed"),
    _getitem_case((Ellipsis, None, [1, 1]), "ellipsis-newaxis-ints"),
    _getitem_case(([0, 3], slice(1, 4), np.arange(6) % 4 == 1), "ints-and-mask"),
    _getitem_case(np.array([6, 0, 6]), "vector-repeats", sample(7)),
    Case(operator.getitem, lambda a: a[a > 0], (sample(3, 4),), "traced-mask"),
    Case(
        _scatter_add, lambda v: _scatter_add((5, 3), ([0, 4, 0, 0],), v), (sample(4, 3),), "repeats"
    ),
    Case(
        _scatter_add,
        lambda v: _scatter_add((5, 3), (slice(1, None, 2),), v),
        (sample(2, 3),),
        "slice",
    ),
    Case(
        _scatter_add,
        lambda v: _scatter_add((2, 3), (Ellipsis, [1, 1]), v),
        (sample(1, 2),),
        "broadcast-values",
    ),
    Case(setitem, lambda x, v: setitem(x, slice(1, 3), v), (sample(4, 5), sample(2, 5)), "slice"),
    Case(
        setitem,
        lambda x, v: setitem(x, (Ellipsis, 1), v),
        (sample(4, 5), sample(1)),
        "broadcast-value",
    ),
    Case(setitem, lambda x, v: setitem(x, 2, v), (sample(4, 5), sample(1, 5)), "leading-ones"),
    Case(
        setitem,
        lambda x, v: setitem(x, [0, 2, 0], v),
        (sample(4, 5), sample(3, 5)),
        "repeated-ints",
    ),
    Case(setitem, lambda x, v: setitem(x, _MASK[0], v), (sample(5, 6), sample(14)), "mask"),
    Case(
        setitem,
        lambda x, v: setitem(x, (slice(None, None, -2), slice(4, 0, -1)), v),
        (sample(4, 5), sample(2, 4)),
        "negative-steps",
    ),
    Case(setitem, lambda x: setitem(x, (0, [1, 3]), 3.0), (sample(4, 5),), "constant-value"),
    Case(
        setitem,
        lambda v: setitem(np.ones((4, 5)), (slice(None), 1), v),
        (sample(4),),
        "into-constant",
    ),
    Case(setitem, _assign, (sample(4, 5), sample(2, 3)), "operator-syntax"),
    Case(np.take, lambda a: np.take(a, [3, 0, 3], axis=1), (sample(4, 5),), "axis"),
    Case(np.take, lambda a: np.take(a, np.array([[0, 19], [5, 5]])), (sample(4, 5),), "flat"),
    Case(np.take, lambda a: np.take(a, [-1, 7, 2], axis=0, mode="wrap"), (sample(4, 5),), "wrap"),
    Case(np.take, lambda a: np.take(a, [-2, 9, 4], axis=-1, mode="clip"), (sample(4, 5),), "clip"),
    Case(
        np.take_along_axis,
        lambda a: np.take_along_axis(a, np.argsort(_A[:, :, 0]), axis=1),
        (sample(4, 5),),
        "permutation",
    ),
    Case(
        np.take_along_axis,
        lambda a: np.take_along_axis(a, np.array([[0, 0], [1, 4], [2, 2], [3, 3]]), axis=1),
        (sample(4, 5),),
        "repeats",
    ),
    Case(
        np.take_along_axis,
        lambda a: np.take_along_axis(a, np.array([[3, 0, 0, 1, 3]]), axis=0),
        (sample(4, 5),),
        "axis0-broadcast",
    ),
    Case(
        np.take_along_axis,
        lambda a: np.take_along_axis(a, np.array([5, 5, 0]), axis=None),
        (sample(2, 3),),
        "flat",
    ),
]
