"""Signature keys: what a compiled step is specialised on, and why a call did not match.

A compiled step is valid for calls whose arguments have the same structure, shapes, dtypes and
devices of arrays, and the same values of everything else that tracing baked into the tape:
Python ints, bools and strings, the floats and flags held by objects (``model.training``), the
functions they hold (``activation``). Python floats passed directly are traced like arrays
(their value is an input), and random generators are read from the arguments on every call,
so neither is part of the key by value.
"""

from __future__ import annotations

import types

import numpy as np

from ..tree import _children, format_path, is_array

__all__ = ["signature", "describe_change", "find_objects", "accessor"]

_VALUES = (bool, int, str, bytes, type(None), complex, float)
_BY_IDENTITY = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    type,
    np.ufunc,
    np.dtype,
)


def _is_generator(x) -> bool:
    return hasattr(x, "bit_generator") or type(x).__name__ == "Generator"


def _array_key(x) -> tuple:
    device = getattr(getattr(x, "device", None), "id", "cpu")  # CuPy arrays: the GPU's id
    return (type(x).__name__, tuple(np.shape(x)), x.dtype, device, _layout(x))


def _layout(x):
    """``None`` for C-contiguous data, else the strides: a compiled step writes its buffers in
    the layout NumPy chose when tracing, which follows the inputs' layouts."""
    flags = getattr(x, "flags", None)
    return None if flags is None or flags.c_contiguous else x.strides


def _tree_key(obj) -> tuple:
    entries: list = []
    seen: set[int] = set()

    def walk(x, path):
        cls = type(x)
        if is_array(x):
            entries.append((path, "shared") if id(x) in seen else (path, _array_key(x)))
            seen.add(id(x))
        elif cls in _VALUES:
            entries.append((path, cls, x))
        elif id(x) in seen:
            entries.append((path, "shared"))
        elif isinstance(x, _BY_IDENTITY):
            entries.append((path, "object", x))
        elif _is_generator(x):
            entries.append((path, "generator"))
        else:
            seen.add(id(x))
            entries.append((path, cls))
            for key, child in _children(x):
                walk(child, path + (key,))

    walk(obj, ())
    return tuple(entries)


def signature(args: tuple) -> tuple:
    """The cache key of a call: one entry per argument.

    >>> signature((np.ones((2, 3)), 3, 0.5)) == signature((np.zeros((2, 3)), 3, 1.5))
    True
    >>> signature((np.ones(2), 3)) == signature((np.ones(2), 4))
    False
    """
    key = []
    for x in args:
        cls = type(x)
        if cls is np.ndarray:
            key.append(
                (x.shape, x.dtype) if x.flags.c_contiguous else (x.shape, x.dtype, x.strides)
            )
        elif cls is float:
            key.append(float)
        elif cls in _VALUES:
            key.append((cls, x))
        elif is_array(x):
            key.append(_array_key(x))
        else:
            key.append((cls, _tree_key(x)))
    return tuple(key)


def _show(entry) -> str:
    if isinstance(entry, tuple) and len(entry) in (2, 3) and isinstance(entry[0], tuple):
        strides = f" strides {entry[2]}" if len(entry) == 3 else ""
        return f"{np.dtype(entry[1]).name}{list(entry[0])}{strides}"  # a NumPy array
    if isinstance(entry, tuple) and len(entry) == 5 and isinstance(entry[1], tuple):
        strides = f" strides {entry[4]}" if entry[4] else ""
        return f"{np.dtype(entry[2]).name}{list(entry[1])} on {entry[3]}{strides}"
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], type):
        return f"{entry[0].__name__} {entry[1]!r}"
    if entry is float:
        return "float"
    return repr(entry)


def _tree_change(old: tuple, new: tuple) -> str | None:
    olds = {e[0]: e[1:] for e in old}
    news = {e[0]: e[1:] for e in new}
    for path in list(news) + [p for p in olds if p not in news]:
        a, b = olds.get(path), news.get(path)
        if a != b:
            where = format_path(path) or "(the object)"
            a = "absent" if a is None else _show(a if len(a) != 1 else a[0])
            b = "absent" if b is None else _show(b if len(b) != 1 else b[0])
            return f".{where}: {a} -> {b}" if path else f": {a} -> {b}"
    return None


def describe_change(old: tuple, new: tuple, names: list[str]) -> str:
    """Which part of the key differs between two signatures, in words.

    >>> describe_change(signature((np.ones(2),)), signature((np.ones(3),)), ["x"])
    'x: float64[2] -> float64[3]'
    """
    if len(old) != len(new):
        return f"the number of arguments changed ({len(old)} -> {len(new)})"
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a == b:
            continue
        name = names[i] if i < len(names) else f"args[{i}]"
        trees = [isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], tuple) and
                 isinstance(k[0], type) and k[0] not in _VALUES for k in (a, b)]  # fmt: skip
        if all(trees) and a[0] is b[0]:
            change = _tree_change(a[1], b[1])
            if change:
                return f"{name}{change}"
        return f"{name}: {_show(a)} -> {_show(b)}"
    return "no difference in the key"


def find_objects(args: tuple, wanted: set[int]) -> dict[int, tuple[int, tuple]]:
    """Where objects with ids in ``wanted`` sit inside ``args``: ``{id: (arg, path)}``.

    >>> rng = np.random.default_rng(0)
    >>> find_objects(({"rng": rng},), {id(rng)})[id(rng)]
    (0, ('rng',))
    """
    found: dict[int, tuple[int, tuple]] = {}
    seen: set[int] = set()

    def walk(x, arg, path):
        if id(x) in wanted and id(x) not in found:
            found[id(x)] = (arg, path)
        if id(x) in seen or is_array(x) or type(x) in _VALUES or isinstance(x, _BY_IDENTITY):
            return
        seen.add(id(x))
        if _is_generator(x):
            return
        for key, child in _children(x):
            walk(child, arg, path + (key,))

    for i, a in enumerate(args):
        walk(a, i, ())
    return found


def accessor(args: tuple, arg: int, path: tuple) -> tuple[str, list[type]]:
    """Python source reading ``args[arg]`` at ``path``, and the container types on the way.

    >>> accessor(({"w": [np.ones(1)]},), 0, ("w", 0))
    ("a0['w'][0]", [<class 'dict'>, <class 'list'>])
    """
    expr, x, containers = f"a{arg}", args[arg], []
    for key in path:
        cls = type(x)
        containers.append(cls)
        if isinstance(x, (dict, list, tuple)):
            expr += f"[{key!r}]"
            x = x[key]
        else:
            expr += f".{key}" if isinstance(key, str) and key.isidentifier() else ""
            if not (isinstance(key, str) and key.isidentifier()):
                expr = f"getattr({expr}, {key!r})"
            x = getattr(x, key)
    return expr, containers
