"""One backward pass per recurrent node in eager ``ad.grad``, shared by the node's rules.

``ad.grad`` calls one rule per differentiated argument of a node, all on the same arrays; the
LSTM's and GRU's rules each need the result of one backward loop over time. :func:`once` runs
it for the first rule and hands the same result to the others. (Traced calls, inside
``compile_grad``, run as they are: the compiler merges the repeated calls itself.)

>>> calls = []
>>> def loop(dy, ws, x):
...     calls.append(1)
...     return dy + x
>>> ws, dy, x = np.zeros(2), np.ones(2), np.ones(2)
>>> a, b = once("demo", loop, (dy, ws, x)), once("demo", loop, (dy, ws, x))
>>> a is b, len(calls)
(True, 1)
"""

from __future__ import annotations

import weakref

import numpy as np  # noqa: F401  (the example)

from .. import ad

__all__ = ["once"]

_MEMO: dict[int, dict] = {}  # id(ws) -> {kind: (other args, result)}, dropped with ws


def _forget(key: int) -> None:
    _MEMO.pop(key, None)


def once(kind, fn, args):
    """``fn(*args)``, reused by the next rule of the same node (``ad.grad`` calls one rule per
    argument on the same arrays); traced calls are merged by the compiler instead.

    The memo hangs off the workspace ``args[1]`` through a weak reference: it is freed with the
    workspace (that is, with the tape that holds it), never kept alive by the memo itself.
    """
    if any(type(a) is ad.Tracer for a in args):
        return fn(*args)
    ws, others = args[1], args[:1] + args[2:]
    key = id(ws)
    memo = _MEMO.get(key)
    if memo is None or memo["ref"]() is not ws:
        try:
            memo = {"ref": weakref.ref(ws, lambda _, key=key: _forget(key))}
        except TypeError:  # an array type without weak references: no reuse
            return fn(*args)
        _MEMO[key] = memo
    last = memo.get(kind)
    if last is not None and all(a is b for a, b in zip(last[0], others, strict=True)):
        return last[1]
    result = fn(*args)
    memo[kind] = (others, result)
    return result
