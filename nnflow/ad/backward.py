"""Reverse mode: walk a tape backwards, calling each node's rules, summing cotangents.

Rules are called on the nodes' stored values. When those values are tracers of an enclosing
tape (``grad`` inside ``grad``, or ``compile_grad``), every rule call is recorded there, so the
backward pass is itself a tape and can be differentiated or compiled.
"""

from __future__ import annotations

import numpy as np

from .errors import NoRuleError, RuleShapeError
from .registry import _REGISTRY, qualname
from .tape import Node, Tape

__all__ = ["backward", "fit_cotangent", "sum_to_shape"]


def sum_to_shape(g, shape: tuple):
    """Sum ``g`` over the axes that broadcasting added to reach it from ``shape``.

    >>> sum_to_shape(np.ones((4, 2, 3)), (2, 1)).tolist()
    [[3.0], [3.0]]
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


def backward(tape: Tape, output: Node, seed, stop: int | None = None) -> dict[int, object]:
    """Cotangents of every input node of ``tape`` given ``seed`` for ``output``.

    Returns ``{input node index: cotangent}`` (missing when no gradient reached it).
    """
    cotangents: dict[int, object] = {output.index: seed}
    result: dict[int, object] = {}
    nodes = tape.nodes
    registry = _REGISTRY
    for position in range(output.index - 1, -1, -1):
        node = nodes[position]
        dy = cotangents.pop(node.index, None)
        if dy is None:
            continue
        if node.fn is None:
            result[node.index] = dy
            continue
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
            if element is None:
                g = rule(dy, node.value, *node.args, **node.kwargs)
            else:
                if name not in per_sequence:
                    per_sequence[name] = rule(dy, node.value, *node.args, **node.kwargs)
                g = per_sequence[name][element]
            if g is None:
                continue
            value = parent.value
            if (
                g.__class__ is not value.__class__
                or g.shape != value.shape
                or g.dtype != value.dtype
            ):
                g = fit_cotangent(g, parent, node, name)
            previous = cotangents.get(parent.index)
            cotangents[parent.index] = g if previous is None else previous + g
    return result
