"""Metrics for ``Trainer(metrics=...)`` and ``nnflow fit`` scripts: ``fn(model, batch) -> float``.

>>> import numpy as np
>>> identity = lambda x: x
>>> accuracy(identity, (np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])))
0.5
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["accuracy"]


def accuracy(model: Any, batch: Any) -> float:
    """The fraction of samples whose largest logit is the label: ``batch`` is ``(x, labels)``.

    Args:
        model: called on ``x``; returns logits ``(N, classes)``.
        batch: ``(x, labels)`` with integer labels ``(N,)``.
    """
    x, labels = batch[0], batch[1]
    logits = model(x)
    xp = get_array_module(logits)
    return float(xp.mean(xp.argmax(logits, axis=-1) == labels))


def as_metrics(metrics: Any) -> dict[str, Any]:
    """``{name: fn}`` from a dict, one function or a list of functions (named by ``__name__``).

    >>> list(as_metrics(accuracy))
    ['accuracy']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        return dict(metrics)
    if callable(metrics):
        metrics = [metrics]
    return {getattr(fn, "__name__", f"metric{i}"): fn for i, fn in enumerate(metrics)}
