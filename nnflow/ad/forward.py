"""Forward mode: the tangent of each recorded call, computed as the call is made.

A forward-mode tape keeps no history: each node's tangent is computed from its parents'
tangents the moment the node is recorded. The rule used, in order of preference:

1. an explicit ``jvp`` rule from the registry;
2. ``linear`` arguments: the function itself, with that argument replaced by its tangent;
3. ``elementwise`` functions: the reverse rule applied to the (broadcast) tangent, since a
   diagonal Jacobian is its own transpose;
4. otherwise the reverse rule transposed locally: the reverse rule is linear in ``dy``, so
   ``J t`` is the gradient of ``v -> <rule(v), t>``, taken for this one node.
"""

from __future__ import annotations

import numpy as np

from .backward import _rule_for, fit_cotangent
from .registry import lookup
from .tape import Node, place

__all__ = ["tangent_of"]


def _substitute(node: Node, name: str, info, tangents: dict, only=None):
    """The node's arguments with the traced values of argument ``name`` (or the one at
    location ``only``) replaced by their tangents."""
    args, kwargs = list(node.args), dict(node.kwargs)
    for loc, parent in node.parents:
        if _location_name(info, loc) != name or (only is not None and loc != only):
            continue
        t = tangents.get(parent.index)
        if t is None:
            t = np.zeros_like(parent.value)
        if loc[0] == "kw":
            kwargs[loc[1]] = t
        elif len(loc) == 1:
            args[loc[0]] = t
        else:
            args[loc[0]] = place(args[loc[0]], loc[1:], t)
    if info.is_sequence(name) and info.var_positional is None:
        # constant members of a linear sequence contribute nothing: replace them by zeros
        position = info.positional.index(name)
        traced = {loc[1] for loc, _ in node.parents if loc[0] == position and len(loc) > 1}
        args[position] = [
            a if i in traced else np.zeros_like(a) for i, a in enumerate(args[position])
        ]
    return args, kwargs


def _location_name(info, loc) -> str:
    return loc[1] if loc[0] == "kw" else info.argname(loc[0])[0]


def _transposed(rule, node: Node, t, element):
    """``J t`` from the reverse rule ``dy -> J^T dy`` by differentiating ``<rule(v), t>``."""
    from .grad import grad

    def pairing(v):
        g = rule(v, node.value, *node.args, **node.kwargs)
        if element is not None:
            g = g[element]
        return np.sum(g * t)

    return grad(pairing, np.zeros_like(node.value))[1][0]


def tangent_of(node: Node):
    """The tangent of ``node``'s output, or ``None`` when it is identically zero."""
    info = lookup(node.fn)
    tangents = {p.index: p.tangent for _, p in node.parents if p.diff and p.tangent is not None}
    if not tangents:
        return None
    total = None
    done: set = set()
    for loc, parent in node.parents:
        if parent.index not in tangents:
            continue
        name, element, rule = _rule_for(info, node, loc)
        if rule is None and name not in info.jvps and name not in info.linear:
            continue
        t = tangents[parent.index]
        if name in info.jvps:
            contribution = info.jvps[name](t, node.value, *node.args, **node.kwargs)
        elif name in info.linear:
            # a list argument (concatenate) is linear as a whole; ``*operands`` (einsum)
            # are multilinear, one operand at a time
            separate = info.var_positional is not None and info.is_sequence(name)
            key = (name, loc) if separate else name
            if key in done:
                continue
            done.add(key)
            args, kwargs = _substitute(node, name, info, tangents, loc if separate else None)
            contribution = node.fn(*args, **kwargs)
        elif info.elementwise:
            contribution = rule(t, node.value, *node.args, **node.kwargs)
        else:
            contribution = _transposed(rule, node, t, element)
        total = contribution if total is None else total + contribution
    if total is None:
        return None
    shape = np.shape(node.value)
    if np.shape(total) != shape:
        total = np.broadcast_to(total, shape)
    return fit_cotangent(total, node, node, "output") if total is not None else None
