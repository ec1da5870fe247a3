"""Gradient clipping by global norm and by value (torch.nn.utils' ``clip_grad_*_``), in place.

Both take the ``{path: array}`` gradient dict ``ad.grad`` returns and change its arrays in place
(an array that cannot be written, e.g. a broadcast view, is replaced in the dict instead).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

from ..backend import get_array_module

__all__ = ["clip_grad_norm", "clip_grad_value", "global_norm"]


def global_norm(grads: MutableMapping[Any, Any], norm_type: float = 2.0) -> float:
    """The ``norm_type``-norm of all gradients taken together (``inf``: the largest entry).

    >>> import numpy as np
    >>> global_norm({"a": np.array([3.0]), "b": np.array([4.0]), "c": None})
    5.0
    """
    arrays = [g for g in grads.values() if g is not None]
    if not arrays:
        return 0.0
    if norm_type == math.inf:
        return max(float(get_array_module(g).max(abs(g))) if g.size else 0.0 for g in arrays)
    if norm_type == 2.0:
        total = sum(float(get_array_module(g).vdot(g.ravel(), g.ravel())) for g in arrays)
        return math.sqrt(total)
    total = sum(float((abs(g) ** norm_type).sum()) for g in arrays)
    return total ** (1.0 / norm_type)


def clip_grad_norm(
    grads: MutableMapping[Any, Any], max_norm: float, norm_type: float = 2.0
) -> float:
    """Scale all gradients by ``max_norm / (norm + 1e-6)`` when their global norm exceeds it.

    Returns the global norm before clipping (as ``torch.nn.utils.clip_grad_norm_``).

    Args:
        grads: ``{path: array}``; ``None`` entries are skipped.
        max_norm: the largest global norm allowed.
        norm_type: the norm's order (``2.0``; ``math.inf`` for the largest entry).

    >>> import numpy as np
    >>> g = {"w": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0), np.round(g["w"], 4).tolist()
    (5.0, [0.6, 0.8])
    """
    norm = global_norm(grads, norm_type)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for key, g in grads.items():
            if g is not None:
                _scale(grads, key, g, coef)
    return norm


def clip_grad_value(grads: MutableMapping[Any, Any], clip_value: float) -> None:
    """Clip every gradient entry to ``[-clip_value, clip_value]``.

    >>> import numpy as np
    >>> g = {"w": np.array([-3.0, 0.5, 2.0])}
    >>> clip_grad_value(g, 1.0)
    >>> g["w"].tolist()
    [-1.0, 0.5, 1.0]
    """
    for key, g in grads.items():
        if g is None:
            continue
        xp = get_array_module(g)
        if _writeable(g):
            xp.clip(g, -clip_value, clip_value, out=g)
        else:
            grads[key] = xp.clip(g, -clip_value, clip_value)


def _scale(grads: MutableMapping[Any, Any], key: Any, g: Any, coef: float) -> None:
    if _writeable(g):
        g *= coef
    else:
        grads[key] = g * coef


def _writeable(g: Any) -> bool:
    return getattr(g.flags, "writeable", True)  # CuPy arrays have no such flag: always True
