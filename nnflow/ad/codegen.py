"""Code generation: a planned graph becomes the source of one straight-line Python function.

Every op becomes one line that calls the recorded function, ``v7 = exp(v6, v6)``: ufuncs get
their planned output as the positional ``out`` argument, reductions ``out=``; everything else
is called as recorded. Functions and constants that are not Python literals are names bound in
the function's globals. Nothing here is NumPy-specific: the recorded functions dispatch on
their arguments (NumPy or CuPy), and buffers are allocated by the caller with the inputs'
array module, so a GPU backend can replace lines (fuse elementwise chains) without changing
the rest.

>>> import nnflow.ad as ad
>>> from nnflow.ad.passes import from_tape
>>> from nnflow.ad.memory import plan
>>> _, tape = ad.trace(lambda x: np.exp(x * 2.0), np.ones(3))
>>> graph = from_tape(tape)
>>> print(generate(graph, plan(graph)).source)  # doctest: +NORMALIZE_WHITESPACE
def play(a0):
    v2 = multiply(a0, 2.0, B0)  # float64[3]
    v3 = exp(v2, v2)  # float64[3] in place
    return v3
"""

from __future__ import annotations

import keyword
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tree import get_path, set_path
from .memory import Plan, out_kind
from .passes import Graph, Op
from .tape import GuardFailure, _describe, _fn_name, _Ref

__all__ = ["Generated", "generate"]

_LITERAL = (int, bool, str, type(None))


@dataclass
class Generated:
    """The source of a step and what its globals must hold (buffers are added by the caller).

    ``views`` maps a buffer view's name to ``(buffer, shape, dtype, axes)``.
    """

    source: str
    namespace: dict[str, Any]
    views: dict[str, tuple] = field(default_factory=dict)


def _scalar_input(x):
    """What tracing made of a Python float argument: a float64 scalar."""
    return np.float64(x) if type(x) is float else x


def _guard_failed(message: str):
    raise GuardFailure(message)


def _copy(x):
    return x.copy()


def state_structure(x):
    """The nesting of tuples in ``x``, ``None`` at every other leaf: ``((a, b), c)`` gives
    ``((None, None), None)``; what a state tuple is rebuilt from when it is not there."""
    return tuple(state_structure(item) for item in x) if isinstance(x, tuple) else None


def _set_state(root, prefix: tuple, rest: tuple, structure, value):
    """Write ``value`` at ``prefix + rest``, where ``prefix`` holds the tuple the traced call
    assigned (tuples are rebuilt, see ``set_path``). When what is there now lacks that tuple's
    structure (``None`` after ``Recur.reset()``: the traced call made the tuple from nothing),
    ``structure`` stands in for it; the step writes every leaf of it."""
    current = get_path(root, prefix)
    if state_structure(current) != structure:
        current = structure
    return set_path(root, prefix, set_path(current, rest, value))


class _Names:
    """Names for the globals of the generated function (functions, constants, views)."""

    def __init__(self, known: dict[int, str] | None = None):
        self.namespace: dict[str, Any] = {
            "_scalar_input": _scalar_input,
            "_get_path": get_path,
            "_set_path": set_path,
            "_set_state": _set_state,
            "_setattr": object.__setattr__,
            "_guard_failed": _guard_failed,
            "_index": operator.index,
            "_copy": _copy,
        }
        self.known = dict(known or {})  # id(object) -> expression reading it from the args
        self._ids: dict[int, str] = {}

    def bind(self, obj, hint: str) -> str:
        if id(obj) in self.known:
            return self.known[id(obj)]
        name = self._ids.get(id(obj))
        if name is None:
            base = hint if hint.isidentifier() and not keyword.iskeyword(hint) else "fn"
            name, n = base, 1
            while name in self.namespace or _reserved(name):
                n += 1
                name = f"{base}_{n}"
            self.namespace[name] = obj
            self._ids[id(obj)] = name
        return name

    def const(self, obj) -> str:
        return self.bind(obj, f"_c{len(self._ids)}")


def _reserved(name: str) -> bool:
    return name[:1] in "avB" and name[1:].isdigit() or name in ("play", "int", "getattr")


def _expr(x, names: _Names, value_name) -> str:
    """Python source that evaluates to ``x`` (``_Ref``s become value names)."""
    cls = type(x)
    if cls is _Ref:
        return value_name(x.index)
    if cls is _Fresh:
        return f"_copy({names.const(x.array)})"
    if cls in _LITERAL or (cls is float and math.isfinite(x)):
        return repr(x)
    if x is Ellipsis:
        return "..."
    if cls in (tuple, list) and _has_ref(x) or cls is tuple and _all_literal(x):
        items = [_expr(e, names, value_name) for e in x]
        if cls is list:
            return f"[{', '.join(items)}]"
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    if cls is dict and _has_ref(x):
        body = ", ".join(
            f"{_expr(k, names, value_name)}: {_expr(v, names, value_name)}" for k, v in x.items()
        )
        return "{" + body + "}"
    if isinstance(x, tuple) and hasattr(x, "_fields") and _has_ref(x):
        items = ", ".join(_expr(e, names, value_name) for e in x)
        return f"{names.bind(cls, cls.__name__)}({items})"
    return names.const(x)


class _Fresh(_Ref):
    """An array constant in the output: returned as a copy, so that changing what a call
    returned (``g *= 0.5``) cannot change what later calls return."""

    __slots__ = ("array",)

    def __init__(self, array):
        super().__init__(-1)
        self.array = array


def _fresh_constants(structure):
    if type(structure).__name__ == "ndarray":
        return _Fresh(structure)
    if isinstance(structure, (list, tuple)) and not hasattr(structure, "_fields"):
        return type(structure)(_fresh_constants(s) for s in structure)
    if isinstance(structure, dict):
        return {k: _fresh_constants(v) for k, v in structure.items()}
    return structure


def _has_ref(x) -> bool:
    if isinstance(x, _Ref):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_ref(e) for e in x)
    if isinstance(x, dict):
        return any(_has_ref(e) for e in x.values())
    return False


def _all_literal(x) -> bool:
    return all(
        type(e) in _LITERAL or (type(e) is float and math.isfinite(e))
        or (type(e) is tuple and _all_literal(e))
        for e in x
    )  # fmt: skip


def _guard_line(op: Op, names: _Names, value_name) -> str:
    guard, x = op.fn, value_name(op.args[0].index)
    where = f"guard %{op.index}: {guard.kind}(...) == {guard.expected!r} no longer holds"
    fail = f"_guard_failed({where!r})"
    if guard.kind == "bool":
        return f"if {'not ' if guard.expected else ''}{x}: {fail}"
    if guard.kind in ("int", "index") and type(guard.expected) is int:
        convert = "int" if guard.kind == "int" else "_index"
        return f"if {convert}({x}) != {guard.expected!r}: {fail}"
    return f"{names.bind(guard, f'guard{op.index}')}({x})"  # raises GuardFailure itself


_KEYWORD_OUT = {np.maximum, np.minimum}  # positional ``out`` is deprecated for these
_SMALL_BUFFER = 1024  # elements; NumPy's default is 8192 (a 64 KiB float64 buffer per call)


def _broadcasts(op: Op, shape_of) -> bool:
    """A large NumPy elementwise op with a broadcast operand (NumPy's buffered iterator).

    NumPy allocates a ufunc buffer of ``getbufsize()`` elements per such call; a smaller one
    allocates 8x less and, for these strided loops, runs faster too (same bits: elementwise).
    """
    value = op.value
    if not (isinstance(op.fn, np.ufunc) and op.fn.signature is None and type(value) is np.ndarray):
        return False
    if value.size <= _SMALL_BUFFER or not hasattr(np, "setbufsize"):
        return False
    return any(shape_of(a) not in ((), value.shape) for a in op.args)


def _call_line(op: Op, plan: Plan, names: _Names, value_name, views: dict) -> str:
    args = [_expr(a, names, value_name) for a in op.args]
    kwargs = [f"{k}={_expr(v, names, value_name)}" for k, v in op.kwargs.items()]
    dest = plan.dest.get(op.index)
    note = ""
    if dest is not None:
        kind = out_kind(op)
        if dest[0] == "inplace":
            target, note = value_name(dest[1]), " in place"
        else:
            target = _view_name(plan.views[op.index], views)
        if kind == "out" and not isinstance(op.fn, np.ufunc) or op.fn in _KEYWORD_OUT:
            kwargs.append(f"out={target}")
        else:
            args.append(target)
    fn = names.bind(op.fn, _fn_name(op.fn).replace("linalg.", "linalg_"))
    call = f"{fn}({', '.join(args + kwargs)})"
    return f"v{op.index} = {call}  # {_describe(op.value)}{note}"


def _view_name(spec: tuple, views: dict) -> str:
    for name, known in views.items():
        if known == spec:
            return name
    name = f"B{len(views)}"
    views[name] = spec
    return name


def generate(
    graph: Graph,
    plan: Plan,
    n_args: int | None = None,
    inputs: dict[int, str] | None = None,
    writers: dict[tuple, str] | None = None,
    known: dict[int, str] | None = None,
) -> Generated:
    """The source of ``play(a0, a1, ...)`` computing ``graph`` as ``plan`` says.

    Args:
        graph: the (optimised) graph.
        plan: where each op writes (``memory.plan``).
        n_args: how many positional arguments ``play`` takes (default: from the inputs).
        inputs: input op index -> expression reading it from ``a0, a1...`` (default: generic
            ``_get_path`` reads).
        writers: ``(arg, path)`` -> a line writing state ``{}`` there (default: generic
            ``_set_path``).
        known: ``id(constant)`` -> an expression reading that object from the arguments (a
            generator a model holds, resolved on each call rather than baked in).
    """
    names = _Names(known)
    views: dict[str, tuple] = {}
    aliases: dict[int, str] = {}
    lines = []
    for op in graph.inputs:
        arg, path = op.label
        expr = (inputs or {}).get(op.index)
        if expr is None:
            expr = f"a{arg}" if not path else f"_get_path(a{arg}, {path!r})"
            if isinstance(op.value, np.generic):
                expr = f"_scalar_input({expr})"
        if expr.isidentifier():
            aliases[op.index] = expr
        else:
            lines.append(f"v{op.index} = {expr}  # {_describe(op.value)}")

    def value_name(i: int) -> str:
        return aliases.get(i) or f"v{i}"

    defs = {op.index: op for op in graph.ops}

    def shape_of(a) -> tuple:
        return np.shape(defs[a.index].value) if isinstance(a, _Ref) else np.shape(a)

    for op in graph.ops:
        if op.is_input:
            continue
        if op.is_guard:
            lines.append(_guard_line(op, names, value_name))
        elif _broadcasts(op, shape_of):
            names.namespace["_setbufsize"] = np.setbufsize
            lines.append(f"_bufsize = _setbufsize({_SMALL_BUFFER})")
            lines.append(_call_line(op, plan, names, value_name, views))
            lines.append("_setbufsize(_bufsize)")
        else:
            lines.append(_call_line(op, plan, names, value_name, views))
    for arg, path, ref in graph.state:
        value = value_name(ref.index)
        value = f"_copy({value})" if ref.index in plan.copy_state else value
        writer = (writers or {}).get((arg, path)) or f"_set_path(a{arg}, {path!r}, {{}})"
        lines.append(writer.format(value))
    lines.append(f"return {_expr(_fresh_constants(graph.output), names, value_name)}")
    used = [op.label[0] + 1 for op in graph.inputs] + [arg + 1 for arg, _, _ in graph.state]
    n_args = max(used + [n_args or 0])
    header = f"def play({', '.join(f'a{i}' for i in range(n_args))}):"
    source = "\n".join([header] + [f"    {line}" for line in lines]) + "\n"
    return Generated(source, names.namespace, views)
