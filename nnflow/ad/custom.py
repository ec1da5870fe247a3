"""User-facing rule API: primitive, diffrule, nodiff, stop_gradient.

A user rule lands in the same registry as nnflow's own tables, and is checked by the same
registry test when it comes with a sample case.
"""

from __future__ import annotations

from .registry import diffrule, nodiff, primitive, register_nondifferentiable

__all__ = ["primitive", "diffrule", "nodiff", "stop_gradient"]


@primitive
def stop_gradient(x):
    """Return ``x`` unchanged, with no gradient flowing back through it.

    >>> import numpy as np, nnflow.ad as ad
    >>> ad.grad(lambda x: np.sum(x * ad.stop_gradient(x)), np.array([2.0]))[1][0].tolist()
    [2.0]
    """
    return x


register_nondifferentiable(stop_gradient)
