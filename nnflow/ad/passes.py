"""Optimisation passes over a recorded tape: simplify, common subexpressions, dead code.

A tape becomes a :class:`Graph`: a list of :class:`Op` (``%index = fn(args...)``, with
``_Ref(index)`` where an argument is the value of an earlier op), the output structure and the
state writes. Each pass takes a graph and returns a new one; none changes what the graph
computes, and only ``simplify`` may change how (always to the same bits, since multiplying by
one, reshaping and summing without ``keepdims`` are exact):

- :func:`simplify` rewrites patterns the backward pass produces: multiplying by a constant of
  ones (the seed cotangent ``1`` broadcast through ``sum``), scattering into zeros with a key
  that only adds axes (the derivative of ``b[:, None]``), and ``reshape(sum(..., keepdims))``
  (how broadcast axes are summed back), so the summed gradient is written in one reduction.
  ``exp``'s derivative reuses its forward output by its rule (``dy * y``): with the ones
  cotangent gone, the gradient of ``sum(exp(z))`` is the forward buffer itself.
- :func:`cse` merges calls of the same function on the same arguments (the rules recompute
  ``expand_dims(x)``, ``swapaxes(W)`` and the like for each argument of a node).
- :func:`dce` drops ops whose values nothing needs: no output, state, guard or random draw
  depends on them (gradient work for arguments outside ``wrt`` is never recorded at all).

Random draws (functions marked ``__nnflow_impure__``) and guards are never merged or dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .rules.indexing import _scatter_add
from .tape import Guard, Tape, _describe, _fn_name, _Ref, _show_arg

__all__ = ["Op", "Graph", "from_tape", "simplify", "cse", "dce", "optimize", "is_impure"]


class Op:
    """One operation: ``%index = fn(*args, **kwargs)``; ``fn is None`` for an input."""

    __slots__ = ("index", "fn", "args", "kwargs", "value", "label")

    def __init__(self, index: int, fn, args=(), kwargs=None, value=None, label=None):
        self.index, self.fn, self.args = index, fn, tuple(args)
        self.kwargs, self.value, self.label = dict(kwargs or {}), value, label

    @property
    def is_input(self) -> bool:
        return self.fn is None

    @property
    def is_guard(self) -> bool:
        return isinstance(self.fn, Guard)

    def refs(self) -> list[int]:
        """Indices of the values this op reads."""
        return list(refs_in((self.args, self.kwargs)))

    def renamed(self, mapping: dict[int, int]) -> Op:
        """This op with its references renamed by ``mapping`` (a new op when any changes)."""
        if not mapping or not any(i in mapping for i in self.refs()):
            return self
        args = substitute(self.args, mapping)
        kwargs = substitute(self.kwargs, mapping)
        return Op(self.index, self.fn, args, kwargs, self.value, self.label)

    def __repr__(self):
        if self.is_input:
            return f"%{self.index} = input {self.label}"
        shown = [_show_arg(a) for a in self.args]
        shown += [f"{k}={_show_arg(v)}" for k, v in self.kwargs.items()]
        return f"%{self.index} = {_fn_name(self.fn)}({', '.join(shown)})"


class Graph:
    """Ops in execution order, the output structure and the state writes, with ``_Ref``s."""

    def __init__(self, ops: list[Op], output: Any, state: list[tuple[int, tuple, _Ref]]):
        self.ops, self.output, self.state = list(ops), output, list(state)

    @property
    def inputs(self) -> list[Op]:
        return [op for op in self.ops if op.is_input]

    def escaping(self) -> set[int]:
        """Values that leave the graph: outputs and state written back."""
        return set(refs_in(self.output)) | set(refs_in([ref for _, _, ref in self.state]))

    def uses(self) -> dict[int, int]:
        """How many times each value is read (outputs and state count as reads)."""
        counts: dict[int, int] = {}
        for i in [r for op in self.ops for r in op.refs()] + list(refs_in(self.output)):
            counts[i] = counts.get(i, 0) + 1
        for _, _, ref in self.state:
            counts[ref.index] = counts.get(ref.index, 0) + 1
        return counts

    def __str__(self):
        lines = [f"{op!r:<60} {_describe(op.value)}" for op in self.ops]
        lines += [f"state {arg}{list(path)} = {ref!r}" for arg, path, ref in self.state]
        return "\n".join(lines + [f"return {_show_arg(self.output)}"])

    __repr__ = __str__


def refs_in(structure):
    """Yield the index of every ``_Ref`` inside nested tuples, lists and dicts."""
    if isinstance(structure, _Ref):
        yield structure.index
    elif isinstance(structure, (list, tuple)):
        for item in structure:
            yield from refs_in(item)
    elif isinstance(structure, dict):
        for item in structure.values():
            yield from refs_in(item)


def substitute(structure, mapping: dict[int, int]):
    """``structure`` with every ``_Ref(i)`` replaced by ``_Ref(mapping.get(i, i))``."""
    if isinstance(structure, _Ref):
        return _Ref(mapping.get(structure.index, structure.index))
    if isinstance(structure, (list, tuple)):
        items = [substitute(s, mapping) for s in structure]
        if isinstance(structure, list):
            return items
        return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
    if isinstance(structure, dict):
        return {k: substitute(v, mapping) for k, v in structure.items()}
    return structure


def from_tape(tape: Tape) -> Graph:
    """The graph of a recorded tape (the tape itself is not changed)."""
    ops = []
    for node in tape.nodes:
        if node.is_input:
            ops.append(Op(node.index, None, value=node.value, label=node.label))
        else:
            args, kwargs = tape._args_with_refs(node)
            ops.append(Op(node.index, node.fn, args, kwargs, node.value))
    return Graph(ops, tape.output, tape.state)


def is_impure(fn: Callable) -> bool:
    """True for functions that must run on every replay (random draws)."""
    return bool(getattr(fn, "__nnflow_impure__", False))


def _renamed_graph(graph: Graph, ops: list[Op], mapping: dict[int, int]) -> Graph:
    state = [(a, p, substitute(r, mapping)) for a, p, r in graph.state]
    return Graph(ops, substitute(graph.output, mapping), state)


# -- simplify ---------------------------------------------------------------------------------
def _is_one(c) -> bool:
    if isinstance(c, (_Ref, bool)) or not isinstance(c, (int, float, np.ndarray, np.generic)):
        return False
    dtype = getattr(c, "dtype", None)
    if dtype is not None and dtype.kind not in "iuf":
        return False
    return bool(np.all(np.asarray(c) == 1))


def _times_one(op: Op, defs: dict, escaping: set, uses: dict):
    """``x * 1`` and ``x / 1`` -> ``x`` (a broadcast view when ``1`` is the larger operand)."""
    if op.fn not in (np.multiply, np.divide) or op.kwargs or len(op.args) != 2:
        return None
    a, b = op.args
    if op.fn is np.multiply and isinstance(b, _Ref) and _is_one(a):
        a, b = b, a
    if not (isinstance(a, _Ref) and _is_one(b)):
        return None
    x = defs[a.index].value
    if getattr(x, "dtype", None) != getattr(op.value, "dtype", None):
        return None
    if np.shape(x) == np.shape(op.value):
        return a.index
    if op.index in escaping:  # a read-only broadcast view must not reach the caller
        return None
    return Op(op.index, np.broadcast_to, (a, np.shape(op.value)), value=op.value)


def _only_adds_axes(key) -> bool:
    parts = key if type(key) is tuple else (key,)
    full = slice(None)
    return all(p is None or p is Ellipsis or p == full for p in parts)


def _scatter_to_reshape(op: Op, defs: dict, escaping: set, uses: dict):
    """``_scatter_add(shape, key, g)`` with a key that only inserts axes is ``reshape(g)``."""
    if op.fn is not _scatter_add or op.kwargs or len(op.args) != 3:
        return None
    shape, key, g = op.args
    if not isinstance(g, _Ref) or isinstance(key, _Ref) or not _only_adds_axes(key):
        return None
    if np.size(defs[g.index].value) != math.prod(shape):
        return None
    return Op(op.index, np.reshape, (g, tuple(shape)), value=op.value)


def _summed_reshape(op: Op, defs: dict, escaping: set, uses: dict):
    """``reshape(sum(x, axis, keepdims=True), s)`` -> ``sum(x, axis)`` when ``s`` fits."""
    if op.fn is not np.reshape or op.kwargs not in ({}, {"order": "C"}) or len(op.args) != 2:
        return None
    src, shape = op.args
    inner = defs.get(src.index) if isinstance(src, _Ref) else None
    if inner is None or inner.fn is not np.sum or uses.get(src.index) != 1:
        return None
    if inner.kwargs.get("keepdims") is not True or len(inner.args) != 1:
        return None
    kwargs = {k: v for k, v in inner.kwargs.items() if k != "keepdims"}
    axis = kwargs.get("axis")
    axes = (axis,) if isinstance(axis, int) else axis
    if not isinstance(axes, tuple):
        return None
    ndim = np.ndim(inner.value)
    kept = tuple(
        n for i, n in enumerate(np.shape(inner.value)) if i not in {a % ndim for a in axes}
    )
    if not isinstance(shape, (tuple, list)) or tuple(shape) != kept or np.shape(op.value) != kept:
        return None
    return Op(op.index, np.sum, inner.args, kwargs, value=op.value)


def _same_shape_view(op: Op, defs: dict, escaping: set, uses: dict):
    """``reshape``/``broadcast_to`` to the shape a value already has -> the value."""
    if op.fn not in (np.reshape, np.broadcast_to) or len(op.args) != 2:
        return None
    if op.kwargs not in ({}, {"order": "C"}) or op.kwargs and op.fn is not np.reshape:
        return None
    src = op.args[0]
    if not isinstance(src, _Ref) or op.index in escaping:
        return None
    if np.shape(defs[src.index].value) == np.shape(op.value):
        return src.index
    return None


def simplify(graph: Graph) -> Graph:
    """Algebraic simplification of the patterns the backward pass records (see module doc).

    >>> import nnflow.ad as ad
    >>> _, tape = ad.trace(lambda x: ad.grad(lambda x: np.sum(np.exp(x)), x)[1][0], np.ones(3))
    >>> [_fn_name(op.fn) for op in dce(simplify(from_tape(tape))).ops[1:]]
    ['exp']
    """
    uses, escaping = graph.uses(), graph.escaping()
    defs: dict[int, Op] = {}
    mapping: dict[int, int] = {}
    ops = []
    for op in graph.ops:
        op = op.renamed(mapping)
        for rewrite in _REWRITES:
            result = rewrite(op, defs, escaping, uses)
            if isinstance(result, int):  # the op computes an existing value
                mapping[op.index] = result
                break
            op = result or op
        else:
            defs[op.index] = op
            ops.append(op)
    return _renamed_graph(graph, ops, mapping)


_REWRITES = (_times_one, _scatter_to_reshape, _same_shape_view, _summed_reshape)


# -- common subexpressions --------------------------------------------------------------------
def _key(x):
    cls = type(x)
    if cls is _Ref:
        return ("%", x.index)
    if cls is float:
        return (float, x.hex())  # 0.0 and -0.0 differ
    if cls in (int, bool, str, type(None), complex) or x is Ellipsis:
        return (cls, x)
    if cls in (tuple, list):
        return (cls, tuple(_key(e) for e in x))
    if cls is dict:
        return (dict, tuple((k, _key(v)) for k, v in x.items()))
    if cls is slice:
        return (slice, _key(x.start), _key(x.stop), _key(x.step))
    if isinstance(x, np.dtype):
        return (np.dtype, x)
    if isinstance(x, np.generic):
        return (cls, x.tobytes())
    return ("id", id(x))  # arrays and other objects: the same object only


def cse(graph: Graph) -> Graph:
    """Merge ops that call the same function on the same arguments.

    >>> import nnflow.ad as ad
    >>> _, tape = ad.trace(lambda x: np.sin(x) + np.sin(x), np.ones(2))
    >>> len(cse(from_tape(tape)).ops)
    3
    """
    seen: dict[Any, int] = {}
    mapping: dict[int, int] = {}
    ops = []
    for op in graph.ops:
        op = op.renamed(mapping)
        if not (op.is_input or op.is_guard or is_impure(op.fn)):
            try:
                key = (op.fn, _key(op.args), _key(op.kwargs))
                first = seen.setdefault(key, op.index)
            except TypeError:  # an unhashable function
                first = op.index
            if first != op.index:
                mapping[op.index] = first
                continue
        ops.append(op)
    return _renamed_graph(graph, ops, mapping)


# -- dead code --------------------------------------------------------------------------------
def dce(graph: Graph) -> Graph:
    """Drop ops that no output, state write, guard or random draw depends on.

    >>> import nnflow.ad as ad
    >>> _, tape = ad.trace(lambda x: (np.cos(x), np.sin(x))[1], np.ones(2))
    >>> [_fn_name(op.fn) for op in dce(from_tape(tape)).ops]
    ['input', 'sin']
    """
    live = graph.escaping()
    kept = []
    for op in reversed(graph.ops):
        if op.index in live or op.is_input or op.is_guard or is_impure(op.fn):
            kept.append(op)
            live.update(op.refs())
    return Graph(kept[::-1], graph.output, graph.state)


def optimize(graph: Graph) -> Graph:
    """``dce(cse(simplify(graph)))``: every pass, in the order that lets each help the next."""
    return dce(cse(simplify(graph)))
