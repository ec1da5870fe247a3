"""Reverse mode: walk a tape backwards, calling each node's rules, summing cotangents.

Rules are called on the nodes' stored values. When those values are tracers of an enclosing
tape (``grad`` inside ``grad``, or ``compile_grad``), every rule call is recorded there, so the
backward pass is itself a tape and can be differentiated or compiled.

The seed of ``grad`` is ``UNIT``: the cotangent "every entry 1", kept symbolic as long as the
rules allow, so that ``sum(exp(x))`` costs no multiplication by an array of ones. A reduction
in ``UNIT_REDUCTIONS`` (``np.sum``) hands ``UNIT`` on to its argument, a rule in ``UNIT_RULES``
(the elementwise ufuncs: ``dy * y`` is ``y``) is called with ``UNIT`` itself, and every other
rule gets real ones, as it would without the shortcut. Only plain arrays take this path:
tracers (higher order, ``compile_grad``) always get real ones. Cotangents that several uses
sum up are accumulated in place, into the buffer the first sum allocated (never into a rule's
result, a forward value or a broadcast view).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .errors import NoRuleError, RuleShapeError
from .registry import _REGISTRY, qualname
from .tape import Node, Tape
from .tracer import Tracer

__all__ = ["UNIT", "UNIT_REDUCTIONS", "UNIT_RULES", "backward", "fit_cotangent", "sum_to_shape"]


class _Unit:
    """The cotangent 1 (every entry one, any shape): ``UNIT * a`` is ``a``, not a copy.

    Only the arithmetic the elementwise rules do on ``dy`` is defined; a rule that does
    anything else must not be in ``UNIT_RULES``.
    """

    __slots__ = ()

    def __mul__(self, other):
        return other

    __rmul__ = __mul__

    def __neg__(self):
        return -1.0

    def __pos__(self):
        return self

    def __truediv__(self, other):
        return 1.0 / other

    def __repr__(self):
        return "UNIT"


#: The seed of ``grad``: the cotangent of a scalar output, 1.
UNIT = _Unit()
#: Rules that accept ``UNIT`` as ``dy`` (they only multiply, divide or negate it). A result
#: ``UNIT`` means ones of the node's shape.
UNIT_RULES: set = set()
#: Reduction rules whose cotangent for ``UNIT`` is ``UNIT`` again (ones of the argument).
UNIT_REDUCTIONS: set = set()
# The index of ``where`` in ``np.sum(a, axis, dtype, out, keepdims, initial, where)``: a sum
# with more positional arguments than this is masked, and does not hand ``UNIT`` on.
_WHERE_POSITION = 6


def sum_to_shape(g, shape: tuple):
    """Sum ``g`` over the axes that broadcasting added to reach it from ``shape``.

    >>> sum_to_shape(np.ones((4, 2, 3)), (2, 1)).tolist()
    [[12.0], [12.0]]
    """
    gshape = np.shape(g)
    if gshape == shape:
        return g
    lead = len(gshape) - len(shape)
    if lead < 0:
        return None
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1
    )
    if axes:
        g = np.sum(g, axis=axes, keepdims=True)
    if lead:
        g = np.reshape(g, np.shape(g)[lead:])
    return g if np.shape(g) == shape else None


def fit_cotangent(g, parent: Node, node: Node, argname: str):
    """Bring a rule's result to the parent's shape and dtype, or say which rule is wrong."""
    value = parent.value
    shape = np.shape(value)
    if np.shape(g) != shape:
        fitted = sum_to_shape(g, shape)
        if fitted is None:
            raise RuleShapeError(
                f"nnflow.ad: the derivative rule of {qualname(node.fn)} for argument "
                f"{argname!r} returned shape {np.shape(g)}, but that argument has shape "
                f"{shape} (the cotangent must have the argument's shape, or broadcast to it)"
            )
        g = fitted
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(g, "dtype", dtype) != dtype:
        g = g.astype(dtype)
    return g


def _rule_for(info, node: Node, loc):
    cached = info.cache.get(loc)
    if cached is not None:
        return cached
    found = _find_rule(info, node, loc)
    info.cache[loc] = found
    return found


def _find_rule(info, node: Node, loc):
    if loc[0] == "kw":
        name, element = loc[1], None
    else:
        name, element = info.argname(loc[0])
        if element is None and len(loc) > 1:
            element = loc[1]
    if name in info.nodiff:
        return name, element, None
    rule = info.rules.get(name)
    if rule is None:
        raise NoRuleError(node.fn, name)
    return name, element, rule


def _ones(value):
    """Real ones like ``value``: a read-only broadcast view for a plain array (no memory)."""
    if type(value) is Tracer or np.ndim(value) == 0:
        return np.ones_like(value)
    xp = get_array_module(value)
    return xp.broadcast_to(xp.ones((), dtype=value.dtype), value.shape)


def _unit_cotangent(rule, node: Node, parent: Node):
    """The cotangent ``rule`` gives for ``dy = UNIT``, or ``None`` when real ones are needed.

    ``UNIT`` (ones of the node's shape) stays symbolic when the parent has the node's shape.
    A result that is one of the node's arguments (``UNIT * b`` is ``b``) would alias it: real
    ones then (the multiplication copies, as without the shortcut). Anything else is a fresh
    array, a scalar, or the node's own output (a ufunc's fresh result, which nothing writes).
    """
    g = rule(UNIT, node.value, *node.args)
    shape = np.shape(node.value)
    if g is UNIT:
        return UNIT if np.shape(parent.value) == shape else _ones(node.value)
    for arg in node.args:
        if g is arg:
            return None
    if not hasattr(g, "shape"):  # a Python scalar: ``-UNIT`` or ``UNIT * 2.0``
        xp = get_array_module(node.value)
        g = xp.asarray(g, dtype=getattr(parent.value, "dtype", None))
    if np.shape(g) != shape:
        g = get_array_module(node.value).broadcast_to(g, shape)
    return g


def _owns(total) -> bool:
    """Whether ``total`` (a sum ``previous + g`` just computed) is a plain, fresh array."""
    cls = total.__class__
    return cls is np.ndarray or (cls is not Tracer and cls is get_array_module(total).ndarray)


def backward(tape: Tape, output: Node, seed, stop: int | None = None) -> dict[int, object]:
    """Cotangents of every input node of ``tape`` given ``seed`` for ``output``.

    ``seed`` is the output's cotangent, or ``UNIT`` for ones (as ``grad`` passes).
    Returns ``{input node index: cotangent}`` (missing when no gradient reached it).
    """
    cotangents: dict[int, object] = {output.index: seed}
    owned: set[int] = set()  # nodes whose cotangent is a buffer allocated here, by a sum
    result: dict[int, object] = {}
    nodes = tape.nodes
    registry = _REGISTRY
    for position in range(output.index - 1, -1, -1):
        node = nodes[position]
        dy = cotangents.pop(node.index, None)
        if dy is None:
            continue
        if node.fn is None:
            result[node.index] = _ones(node.value) if dy is UNIT else dy
            continue
        unit = dy is UNIT
        if unit and type(node.value) is Tracer:  # higher order: the rules record real ones
            dy, unit = _ones(node.value), False
        info = registry[node.fn]
        cache = info.cache
        per_sequence: dict[str, list] = {}
        for loc, parent in node.parents:
            if not parent.diff:
                continue
            entry = cache.get(loc)
            name, element, rule = entry if entry is not None else _rule_for(info, node, loc)
            if rule is None:
                continue
            g = None
            if unit:
                if rule in UNIT_REDUCTIONS and loc == (0,) and len(node.args) <= _WHERE_POSITION:
                    g = UNIT if "where" not in node.kwargs else None  # masked: real ones
                elif rule in UNIT_RULES and element is None and not node.kwargs:
                    g = _unit_cotangent(rule, node, parent)
                if g is None:
                    dy, unit = _ones(node.value), False
            if g is None:
                if element is None:
                    g = rule(dy, node.value, *node.args, **node.kwargs)
                else:
                    if name not in per_sequence:
                        per_sequence[name] = rule(dy, node.value, *node.args, **node.kwargs)
                    g = per_sequence[name][element]
                if g is None:
                    continue
            if g is not UNIT:
                value = parent.value
                if (
                    g.__class__ is not value.__class__
                    or g.shape != value.shape
                    or g.dtype != value.dtype
                ):
                    g = fit_cotangent(g, parent, node, name)
            index = parent.index
            previous = cotangents.get(index)
            if previous is None:
                cotangents[index] = g
                continue
            if previous is UNIT:
                previous = _ones(parent.value)
            if g is UNIT:
                g = _ones(parent.value)
            if index in owned and g.__class__ is previous.__class__:
                previous += g  # a buffer this pass allocated: nothing else holds it
            else:
                total = cotangents[index] = previous + g
                if _owns(total):
                    owned.add(index)
                else:  # a tracer (``+=`` would rebind, not add) or a scalar
                    owned.discard(index)
    return result
