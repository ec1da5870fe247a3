"""Memory planning for compiled tapes: liveness, aliasing, and preallocated buffers.

The planner decides, for every op of a straight-line graph, where its result is written:

- ``("buffer", k)``: into preallocated buffer ``k`` (``out=``). Buffers are allocated once per
  compiled step and reused by every call; one buffer serves many ops whose values are never
  alive at the same time (a linear scan over the ops, best fit by size);
- ``("inplace", i)``: over its argument ``%i``, for an elementwise ufunc whose argument dies at
  that op, has the result's shape and dtype, and is memory the step owns (the exp of a fresh
  ``W @ x + b`` is written where the sum was);
- ``None``: the op allocates as usual (functions without ``out=``, scalars, state written back).

Liveness is per *storage*, not per value: ``reshape``, ``getitem``, ``transpose`` and any
function not known to return a fresh array may return a view of its arguments, so a storage is
alive while any value that may view it is. Inputs and constants belong to the caller and are
never written. Values that leave the step (outputs) keep their buffer to the end, so returned
gradients live in preallocated arrays that the next call overwrites; state written back into
argument objects never lives in a buffer (the next call reads it back as an input).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from .passes import Graph, Op, is_impure
from .rules.indexing import _scatter_add, setitem

__all__ = ["Plan", "plan", "out_kind", "layout", "view_of"]

# Functions that return a new array, never a view of an argument (besides every ufunc).
FRESH = {
    np.sum, np.mean, np.prod, np.max, np.min, np.amax, np.amin, np.var, np.std, np.dot,
    np.concatenate, np.stack, np.where, np.copy, np.outer, np.cumsum, np.cumprod, np.clip,
    np.zeros_like, np.ones_like, np.full_like, _scatter_add, setitem,
}  # fmt: skip
# Reductions that accept ``out=`` (same bits as without it).
REDUCTIONS = {np.sum, np.mean, np.prod, np.max, np.min, np.amax, np.amin}
_REDUCE_KW = {"axis", "keepdims", "dtype"}


def _is_ndarray(value) -> bool:
    """A NumPy or CuPy array of at least one dimension (what ``out=`` can receive)."""
    return type(value).__name__ == "ndarray" and value.ndim > 0


def out_kind(op: Op) -> str | None:
    """How ``op`` can write into a given array: ``"elementwise"``, ``"out"`` or ``None``.

    >>> out_kind(Op(3, np.exp, (np.ones(2),), value=np.ones(2)))
    'elementwise'
    """
    fn, value = op.fn, op.value
    if not _is_ndarray(value):
        return None
    declared = getattr(fn, "__nnflow_out_kind__", None)  # a fused kernel (``fusion``)
    if declared is not None:
        return declared
    if isinstance(fn, np.ufunc):
        if fn.nout != 1 or op.kwargs or len(op.args) != fn.nin:
            return None
        return "elementwise" if fn.signature is None else "out"
    if fn in REDUCTIONS and set(op.kwargs) <= _REDUCE_KW and len(op.args) <= 2:
        return "out"
    return None


def layout(value) -> tuple[int, ...] | None:
    """The order of ``value``'s axes in memory, outermost first (``None``: C order).

    A buffer written with ``out=`` gets the layout NumPy gave the recorded result: for a
    strided input NumPy may otherwise pick another inner loop (a SIMD one for contiguous
    data) and round transcendental functions differently in the last bit.

    >>> layout(np.ones((2, 3)).T), layout(np.ones((2, 3)))
    ((1, 0), None)
    """
    strides = value.strides
    axes = tuple(sorted(range(value.ndim), key=lambda i: -strides[i]))
    return None if axes == tuple(range(value.ndim)) else axes


def view_of(raw, shape: tuple, dtype, axes: tuple | None):
    """A ``shape``/``dtype`` array over the byte buffer ``raw``, its axes laid out as ``axes``.

    >>> view_of(np.empty(48, np.uint8), (2, 3), np.float64, (1, 0)).strides
    (8, 16)
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    flat = raw[:nbytes].view(dtype)
    if axes is None:
        return flat.reshape(shape)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return flat.reshape(tuple(shape[a] for a in axes)).transpose(inverse)


def _fresh(op: Op) -> bool:
    fn = op.fn
    return (
        isinstance(fn, np.ufunc) or fn in FRESH or is_impure(fn)
        or hasattr(fn, "__nnflow_out_kind__")  # a fused kernel writes a new array
    )  # fmt: skip


@dataclass
class _Storage:
    end: int  # position of its last read
    owned: bool  # memory the step may overwrite (fresh per call or a buffer)
    buffer: int | None = None


@dataclass
class Plan:
    """Where each op writes: ``dest[index]`` is ``("buffer", k)``, ``("inplace", i)`` or absent.

    ``buffers[k]`` is the size in bytes of buffer ``k``; ``views[index]`` the ``(k, shape,
    dtype, axes)`` an op writing into buffer ``k`` sees (see :func:`layout`); ``planned`` the
    values living in a buffer.
    """

    dest: dict[int, tuple] = field(default_factory=dict)
    buffers: list[int] = field(default_factory=list)
    views: dict[int, tuple] = field(default_factory=dict)
    planned: set[int] = field(default_factory=set)  # values whose storage is a buffer
    copy_state: set[int] = field(default_factory=set)  # state values that may view a buffer

    def describe(self) -> str:
        total = sum(self.buffers)
        return (
            f"{len(self.buffers)} buffers, {total / 2**20:.2f} MiB, {len(self.dest)} ops in place"
        )


def _last_reads(graph: Graph) -> dict[int, int]:
    end = len(graph.ops)
    last = {}
    for position, op in enumerate(graph.ops):
        for i in op.refs():
            last[i] = position
    for i in graph.escaping():
        last[i] = end
    return last


def _alias_parents(graph: Graph) -> dict[int, list[int]]:
    """For ops that may return views: the values they may view."""
    return {
        op.index: op.refs()
        for op in graph.ops
        if not op.is_input and not op.is_guard and not _fresh(op)
    }


def _extended_ends(graph: Graph, aliases: dict[int, list[int]]) -> dict[int, int]:
    """Each value's last read, extended by the last reads of the views taken of it."""
    ends = _last_reads(graph)
    for op in reversed(graph.ops):
        for parent in aliases.get(op.index, ()):
            ends[parent] = max(ends.get(parent, -1), ends.get(op.index, -1))
    return ends


def _inplace_target(op, position, defs, storage_of, ends):
    for arg in op.args:
        i = getattr(arg, "index", None)
        if i is None or type(arg).__name__ != "_Ref":
            continue
        store = storage_of.get(i)
        if store is None or not store.owned or store.end != position:
            continue
        value = defs[i].value
        out = op.value
        if _is_ndarray(value) and (value.shape, value.dtype) == (out.shape, out.dtype):
            if value.strides == out.strides:  # the layout eager NumPy gave the result
                return i, store
    return None


def plan(graph: Graph) -> Plan:
    """Assign buffers and in-place writes to ``graph``'s ops (a linear scan, best fit).

    >>> import nnflow.ad as ad
    >>> from nnflow.ad.passes import from_tape
    >>> _, tape = ad.trace(lambda x: np.sum(np.exp(np.sin(x) * 2.0)), np.ones(8))
    >>> p = plan(from_tape(tape))
    >>> len(p.buffers), sorted(kind for kind, _ in p.dest.values())
    (1, ['buffer', 'inplace', 'inplace'])
    """
    result = Plan()
    aliases = _alias_parents(graph)
    ends = _extended_ends(graph, aliases)
    state = {ref.index for _, _, ref in graph.state}
    defs = {op.index: op for op in graph.ops}
    storage_of: dict[int, _Storage] = {}
    busy: list[tuple[int, int]] = []  # heap of (end, buffer) for buffers in use
    holder: dict[int, _Storage] = {}  # buffer -> the storage using it
    free: list[int] = []
    for position, op in enumerate(graph.ops):
        while busy and busy[0][0] < position:
            end, k = heapq.heappop(busy)
            if holder[k].end == end and k not in free:  # else stale: extended in place
                free.append(k)
        if op.is_input or op.is_guard:
            if op.is_input:
                storage_of[op.index] = _Storage(ends.get(op.index, -1), owned=False)
            continue
        if op.index in aliases:  # a possible view: shares (and extends) nothing new
            continue
        end = ends.get(op.index, -1)
        kind = out_kind(op) if op.index not in state else None
        if kind == "elementwise":
            found = _inplace_target(op, position, defs, storage_of, ends)
            if found is not None:
                i, store = found
                store.end = max(store.end, end)
                storage_of[op.index] = store
                result.dest[op.index] = ("inplace", i)
                if store.buffer is not None:
                    result.planned.add(op.index)
                    heapq.heappush(busy, (store.end, store.buffer))
                continue
        if kind is None:
            storage_of[op.index] = _Storage(end, owned=True)
            continue
        k = _take_buffer(result.buffers, free, op.value.nbytes)
        storage_of[op.index] = holder[k] = _Storage(end, owned=True, buffer=k)
        heapq.heappush(busy, (end, k))
        result.dest[op.index] = ("buffer", k)
        result.views[op.index] = (k, op.value.shape, op.value.dtype, layout(op.value))
        result.planned.add(op.index)
    result.copy_state = {i for i in state if _may_view(i, result.planned, aliases)}
    return result


def _may_view(i: int, planned: set[int], aliases: dict[int, list[int]]) -> bool:
    """Whether value ``i`` is, or may be a view of, a value living in a buffer."""
    todo, seen = [i], set()
    while todo:
        j = todo.pop()
        if j in planned:
            return True
        if j not in seen:
            seen.add(j)
            todo.extend(aliases.get(j, ()))
    return False


def _take_buffer(buffers: list[int], free: list[int], nbytes: int) -> int:
    """The smallest free buffer of ``nbytes`` or more, else the largest grown, else a new one."""
    fitting = [k for k in free if buffers[k] >= nbytes]
    if fitting:
        k = min(fitting, key=lambda k: buffers[k])
    elif free:
        k = max(free, key=lambda k: buffers[k])
        buffers[k] = nbytes
    else:
        buffers.append(nbytes)
        return len(buffers) - 1
    free.remove(k)
    return k
