"""Gradients that share no memory with one another, as each of PyTorch's ``.grad`` is its own.

A rule may hand one cotangent array to several inputs: ``add``'s rule gives ``dy`` to both
operands, so in ``W x + (b_ih + b_hh)`` the gradients of ``b_ih`` and ``b_hh`` were the same
array. A caller that changes one in place, as ``clip_grad_norm`` does, then changed the other
too (the LSTM's bias gradients were scaled twice: by ``coef**2``). :func:`distinct_gradients`
copies every gradient that shares memory with one met before it; disjoint views of one buffer
(the LSTM's weight gradients are column blocks of one array) stay views.

>>> import numpy as np
>>> g = np.ones(3)
>>> a, b = distinct_gradients([g, {"w": g}])
>>> a is g, b["w"] is g, np.array_equal(b["w"], g)
(True, False, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["distinct_gradients"]

_MAX_WORK = 10_000  # np.shares_memory's budget; past it, count the pair as overlapping


def distinct_gradients(grads: list) -> list:
    """``grads`` (``None``, floats, arrays, ``{path: array}`` dicts) with each array that
    shares memory with an earlier one replaced by a copy; the list and dicts are changed in
    place and returned. Non-array leaves (tracers, floats) are left alone.

    >>> w = np.zeros((2, 3))
    >>> out = distinct_gradients([{"a": w[:, :2], "b": w[:, 1:]}, 1.5])  # overlapping columns
    >>> out[0]["a"].base is w, out[0]["b"].base is None, out[1]
    (True, True, 1.5)
    """
    places = []  # (container, key, array) of every array leaf, in order
    for i, g in enumerate(grads):
        if type(g) is dict:
            places += [(g, key, value) for key, value in g.items() if _is_array(value)]
        elif _is_array(g):
            places.append((grads, i, g))
    if len(places) < 2:  # the common one-argument case costs one pass
        return grads
    kept: dict[int, list] = {}  # id of the memory's owner -> the arrays kept that use it
    for container, key, x in places:
        owner = x
        while getattr(owner, "base", None) is not None and hasattr(owner.base, "base"):
            owner = owner.base
        same = kept.setdefault(id(owner), [])
        if x.size and any(_overlap(x, other) for other in same):
            x = container[key] = x.copy()
            same = kept.setdefault(id(x), [])
        same.append(x)
    return grads


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("cupy")


def _overlap(a: Any, b: Any) -> bool:
    if a is b:
        return True
    xp = get_array_module(a)
    if not xp.may_share_memory(a, b):
        return False
    if xp is not np:
        return True  # the bounds overlap; an exact answer would cost a device sync
    try:
        return bool(np.shares_memory(a, b, max_work=_MAX_WORK))
    except np.exceptions.TooHardError:
        return True
