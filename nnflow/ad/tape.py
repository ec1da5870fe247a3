"""The tape: a flat list of recorded primitive calls, printable and replayable.

A node is ``%i = fn(args...)``: its arguments are stored with every traced input replaced by
its concrete value, plus ``parents``, the list of ``(location, parent node)`` pairs that say
where a traced value sat in the call. ``play`` substitutes new values at those locations.

The active-tape stack below is, with the rule registry, the only global state of nnflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Node", "Tape", "GuardFailure", "Guard", "active_tapes"]

_ACTIVE: list[Tape] = []
_LEVELS = itertools.count(1)


def active_tapes() -> tuple[Tape, ...]:
    """The tapes currently recording, outermost first."""
    return tuple(_ACTIVE)


class GuardFailure(Exception):  # noqa: N818  (a failed guard, not a bug)
    """A replay took a different branch than the recording (a guard did not hold)."""


class Guard:
    """A recorded Python conversion (``bool(t)``, ``int(t)``, ``float(t)``) and its result.

    Calling it on a new value recomputes the conversion and raises ``GuardFailure`` when the
    result differs, which is how a replay notices a data-dependent branch.
    """

    __slots__ = ("kind", "expected")
    _CONVERT = {"bool": bool, "int": int, "float": float, "index": int, "array": None}

    def __init__(self, kind: str, expected: Any):
        self.kind, self.expected = kind, expected

    def __call__(self, x):
        if self.kind == "array":
            same = np.shape(x) == np.shape(self.expected) and bool(np.all(x == self.expected))
        else:
            same = self._CONVERT[self.kind](x) == self.expected
        if not same:
            raise GuardFailure(f"guard {self.kind}(...) == {self.expected!r} no longer holds")
        return self.expected

    def __repr__(self):
        return f"guard_{self.kind}"


class Node:
    """One recorded call. ``index`` is its position on the tape (``%index`` when printed)."""

    __slots__ = ("index", "fn", "args", "kwargs", "parents", "value", "diff", "tangent", "label")

    def __init__(self, index, fn, args, kwargs, parents, value, diff, label=None):
        self.index = index
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.parents = parents
        self.value = value
        self.diff = diff
        if label is not None:
            self.label = label

    @property
    def is_input(self) -> bool:
        return self.fn is None

    def __repr__(self):
        return f"Node(%{self.index} = {_fn_name(self.fn)})"


def _fn_name(fn: Callable | None) -> str:
    if fn is None:
        return "input"
    if isinstance(fn, Guard):
        return repr(fn)
    if isinstance(fn, np.ufunc):
        return fn.__name__
    name = getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", "") or ""
    return f"linalg.{name}" if "linalg" in module else name


def _describe(value) -> str:
    shape = np.shape(value)
    dtype = getattr(value, "dtype", None)
    dtype = np.dtype(dtype).name if dtype is not None else type(value).__name__
    return f"{dtype}[{', '.join(map(str, shape))}]"


class _Ref:
    """Marks where node ``%index``'s value goes in a stored structure."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return f"%{self.index}"


def _show_arg(a) -> str:
    if isinstance(a, _Ref):
        return repr(a)
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_show_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
    if hasattr(a, "shape") and np.ndim(a) > 0:
        return f"const {_describe(a)}"
    if isinstance(a, slice):
        parts = ["" if v is None else str(v) for v in (a.start, a.stop, a.step)]
        return ":".join(parts[:2]) + (f":{parts[2]}" if a.step is not None else "")
    if a is Ellipsis:
        return "..."
    return repr(a)


def place(structure, location: tuple, value):
    """Return ``structure`` with ``value`` put at ``location`` (a path of indices/keys)."""
    key, rest = location[0], location[1:]
    if isinstance(structure, dict):
        out = dict(structure)
        out[key] = place(structure[key], rest, value) if rest else value
        return out
    items = list(structure)
    items[key] = place(items[key], rest, value) if rest else value
    if not isinstance(structure, tuple):
        return items
    return type(structure)(*items) if hasattr(structure, "_fields") else type(structure)(items)


class Tape:
    """A recording of primitive calls.

    ``print(tape)`` shows one line per node; ``tape.play(*args)`` re-runs the recording on
    new arguments of the same structure (shapes may not change).

    >>> import nnflow.ad as ad
    >>> val, tape = ad.trace(lambda x: np.sum(np.exp(x)), np.ones(3))
    >>> print(tape)  # doctest: +NORMALIZE_WHITESPACE
    %1 = input x        float64[3]
    %2 = exp(%1)        float64[3]
    %3 = sum(%2)        float64[]
    return %3
    >>> float(tape.play(np.zeros(3)))
    3.0
    """

    def __init__(self, forward: bool = False):
        self.level = next(_LEVELS)
        self.forward = forward
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.input_paths: list[tuple] = []  # (argument index, path inside it) per input
        self.output: Any = None  # structure of the result, nodes replaced by _Ref
        self.state: list[tuple[int, tuple, Any]] = []  # (arg index, path, _Ref) writes
        self.active = False
        self.tangent_rule: Callable | None = None  # set by forward mode
        self.forward_count = 0  # node numbering when nodes are not kept
        self.arg_names: list[str] = []  # how inputs are labelled when printed

    # -- recording ----------------------------------------------------------------------
    def __enter__(self):
        self.active = True
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        self.active = False
        _ACTIVE.remove(self)
        return False

    def add_input(self, value, diff: bool, arg_index: int, path: tuple, tangent=None) -> Node:
        self.forward_count = len(self.nodes) + 1
        node = Node(self.forward_count, None, (), {}, (), value, diff, (arg_index, path))
        node.tangent = tangent
        self.nodes.append(node)
        self.inputs.append(node)
        self.input_paths.append((arg_index, path))
        return node

    def add(self, fn, args, kwargs, parents, value, diff) -> Node:
        if self.forward:
            self.forward_count += 1
            node = Node(self.forward_count, fn, args, kwargs, parents, value, diff)
            node.tangent = self.tangent_rule(node) if diff else None
            node.args = node.kwargs = None  # forward mode keeps no history
            node.parents = ()
            return node
        node = Node(len(self.nodes) + 1, fn, args, kwargs, parents, value, diff)
        self.nodes.append(node)
        return node

    def add_guard(self, parent: Node, kind: str, expected) -> None:
        if self.forward:
            return
        guard = Guard(kind, expected)
        self.nodes.append(
            Node(len(self.nodes) + 1, guard, (parent.value,), {}, [((0,), parent)], expected, False)
        )

    # -- inspection -----------------------------------------------------------------------
    def __len__(self):
        return len(self.nodes)

    def _args_with_refs(self, node: Node):
        args, kwargs = list(node.args), dict(node.kwargs)
        for loc, parent in node.parents:
            if loc[0] == "kw":
                kwargs[loc[1]] = _Ref(parent.index)
            elif len(loc) == 1:
                args[loc[0]] = _Ref(parent.index)
            else:
                args[loc[0]] = place(args[loc[0]], loc[1:], _Ref(parent.index))
        return args, kwargs

    def __str__(self):
        lines = []
        for node in self.nodes:
            if node.is_input:
                arg, path = node.label
                names = self.arg_names
                where = names[arg] if arg < len(names) else f"args[{arg}]"
                where += "".join(f".{p}" if isinstance(p, str) else f"[{p!r}]" for p in path)
                call = f"input {where}"
            else:
                args, kwargs = self._args_with_refs(node)
                shown = [_show_arg(a) for a in args]
                shown += [f"{k}={_show_arg(v)}" for k, v in kwargs.items()]
                call = f"{_fn_name(node.fn)}({', '.join(shown)})"
                if isinstance(node.fn, Guard):
                    call += f" == {node.fn.expected!r}"
            lines.append(f"%{node.index} = {call:<40} {_describe(node.value)}")
        if self.output is not None:
            lines.append(f"return {_show_arg(self.output)}")
        return "\n".join(lines)

    __repr__ = __str__

    # -- replay ---------------------------------------------------------------------------
    def play(self, *args, **kwargs):
        """Re-run the recorded operations on new ``args`` (same structure and shapes).

        Attributes that the traced function assigned on argument objects are written back,
        as the original call did. A data-dependent branch that goes the other way raises
        ``GuardFailure``.
        """
        from ..tree import get_path, set_path

        values: dict[int, Any] = {}
        for node, (arg_index, path) in zip(self.inputs, self.input_paths, strict=True):
            new = get_path(args[arg_index], path)
            if np.shape(new) != np.shape(node.value):
                raise ValueError(
                    f"tape.play: input {arg_index} at {path} has shape {np.shape(new)}, "
                    f"the tape was recorded with {np.shape(node.value)}"
                )
            # a Python float was recorded as float64 (as grad traces it): same promotions
            values[node.index] = np.float64(new) if type(new) is float else new
        for node in self.nodes:
            if node.is_input:
                continue
            values[node.index] = self._replay_node(node, values)
        for arg_index, path, ref in self.state:
            set_path(args[arg_index], path, _resolve(ref, values))
        return _resolve(self.output, values)

    @staticmethod
    def _replay_node(node: Node, values: dict):
        args, kwargs = node.args, node.kwargs
        if node.parents:
            args, kwargs = list(args), dict(kwargs)
            for loc, parent in node.parents:
                v = values[parent.index]
                if loc[0] == "kw":
                    kwargs[loc[1]] = v
                elif len(loc) == 1:
                    args[loc[0]] = v
                else:
                    args[loc[0]] = place(args[loc[0]], loc[1:], v)
        return node.fn(*args, **kwargs)


def _resolve(structure, values):
    if isinstance(structure, _Ref):
        return values[structure.index]
    if isinstance(structure, (list, tuple)):
        items = [_resolve(s, values) for s in structure]
        if not isinstance(structure, tuple):
            return items
        return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
    if isinstance(structure, dict):
        return {k: _resolve(v, values) for k, v in structure.items()}
    return structure
