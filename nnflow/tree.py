"""Walk objects, dicts, lists and tuples into ``(path, array)`` leaves, and put leaves back.

A path is a tuple of attribute names, list/tuple indices and dict keys, e.g. ``("W",)`` or
``("layers", 0, "bias")``. Objects are walked through their ``__dict__`` (and ``__slots__``);
an object reachable twice (tied weights, cycles) is visited once, at its first path.

Buffers: an object may name some of its attributes in ``__nnflow_buffers__`` (a collection of
attribute names, e.g. ``{"running_mean": True}``; ``nnflow.Model.register_buffer`` maintains
it). Every array under such an attribute is a *buffer*: state that is saved but never trained.
``leaves(obj, buffers=False)`` leaves them out and ``buffer_paths(obj)`` lists them;
``nnflow.ad.grad`` records buffers as non-differentiable inputs, so they never appear in
gradient dicts, while state the differentiated function assigns to them is still written back.

>>> class Net:
...     def __init__(self):
...         self.W, self.layers = np.ones((2, 2)), [{"b": np.zeros(2)}]
>>> [path for path, _ in leaves(Net())]
[('W',), ('layers', 0, 'b')]
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "BUFFERS",
    "leaves",
    "buffer_paths",
    "is_array",
    "get_path",
    "set_path",
    "map_leaves",
    "format_path",
]

BUFFERS = "__nnflow_buffers__"  # attribute naming an object's buffer attributes

_OPAQUE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    type,
    np.random.Generator,
    np.random.BitGenerator,
    np.dtype,
    str,
    bytes,
)


def is_array(x: Any) -> bool:
    """True for NumPy/CuPy arrays, NumPy scalars and tracers (the leaves of a tree).

    >>> is_array(np.zeros(2)), is_array(3.0)
    (True, False)
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    cls = type(x)
    return cls.__name__ in ("Tracer", "ndarray") and cls.__module__ in (
        "nnflow.ad.tracer",
        "cupy",
        "cupy._core.core",
    )


def _children(obj) -> Iterator[tuple[Any, Any]]:
    if isinstance(obj, dict):
        yield from obj.items()
    elif isinstance(obj, (list, tuple)):
        yield from enumerate(obj)
    elif isinstance(obj, _OPAQUE) or callable(obj) and not hasattr(obj, "__dict__"):
        return
    else:
        attrs = getattr(obj, "__dict__", None)
        if attrs is not None:
            yield from list(attrs.items())
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                yield name, getattr(obj, name)


def _walk(obj: Any, prefix: tuple, unique: bool = True) -> list[tuple[tuple, Any, bool]]:
    """``(path, array, is_buffer)`` for every leaf, depth first, each array once (or at every
    path that holds it, with ``unique=False``)."""
    out: list[tuple[tuple, Any, bool]] = []
    seen: set[int] = set()

    def walk(x, path, frozen):
        if is_array(x):
            if not unique or id(x) not in seen:
                seen.add(id(x))
                out.append((path, x, frozen))
            return
        if isinstance(x, (int, float, complex, bool, type(None))) or id(x) in seen:
            return
        seen.add(id(x))
        names = getattr(x, BUFFERS, None) if not isinstance(x, (dict, list, tuple)) else None
        for key, child in _children(x):
            walk(child, path + (key,), frozen or (names is not None and key in names))

    walk(obj, prefix, False)
    return out


def leaves(
    obj: Any, prefix: tuple = (), *, buffers: bool = True, unique: bool = True
) -> list[tuple[tuple, Any]]:
    """All ``(path, array)`` pairs reachable from ``obj``, depth first, in definition order.

    With ``buffers=False``, arrays registered as buffers (see the module docstring) are left
    out. An array reachable at several paths (tied weights) is listed at its first path only,
    unless ``unique=False``.

    >>> leaves({"a": np.zeros(1), "b": [np.ones(2)]})[1][0]
    ('b', 0)
    """
    walked = _walk(obj, prefix, unique)
    return [(path, x) for path, x, frozen in walked if buffers or not frozen]


def buffer_paths(obj: Any) -> set[tuple]:
    """The paths of the arrays inside ``obj`` that are buffers (saved, never trained).

    >>> class Norm:
    ...     __nnflow_buffers__ = ("running_mean",)
    ...     def __init__(self):
    ...         self.weight, self.running_mean = np.ones(2), np.zeros(2)
    >>> buffer_paths(Norm())
    {('running_mean',)}
    """
    return {path for path, _, frozen in _walk(obj, ()) if frozen}


def get_path(obj: Any, path: tuple) -> Any:
    """The value at ``path`` inside ``obj``.

    >>> get_path({"a": [1, 2]}, ("a", 1))
    2
    """
    for key in path:
        obj = obj[key] if isinstance(obj, (dict, list, tuple)) else getattr(obj, key)
    return obj


def set_path(obj: Any, path: tuple, value: Any) -> Any:
    """Put ``value`` at ``path`` and return the (possibly new) root.

    Objects, dicts and lists are updated in place; tuples are immutable, so a tuple on the
    way is rebuilt and stored back into its parent.

    >>> set_path((1, [2, 3]), (1, 0), 9)
    (1, [9, 3])
    """
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, tuple):
        items = list(obj)
        items[key] = set_path(items[key], rest, value)
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, (dict, list)):
        obj[key] = set_path(obj[key], rest, value)
        return obj
    child = set_path(getattr(obj, key), rest, value)
    object.__setattr__(obj, key, child)
    return obj


def map_leaves(obj: Any, fn) -> Any:
    """Replace every leaf ``x`` at ``path`` by ``fn(path, x)``; returns the (new) root.

    >>> map_leaves([np.ones(1)], lambda path, x: x * 2)[0]
    array([2.])
    """
    for path, x in leaves(obj):
        obj = set_path(obj, path, fn(path, x))
    return obj


def format_path(path: tuple) -> str:
    """``("layers", 0, "weight")`` -> ``"layers.0.weight"``.

    >>> format_path(("layers", 0, "weight"))
    'layers.0.weight'
    """
    return ".".join(str(p) for p in path)
