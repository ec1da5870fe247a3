"""``Dropout``: zero each input with probability ``p`` in training, with its own generator."""

from __future__ import annotations

from typing import Any

from .. import random as nnrandom
from ..init import as_generator
from .model import Model

__all__ = ["Dropout"]


class Dropout(Model):
    """In training, ``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)``; in evaluation,
    ``y = x``.

    The mask is drawn from the generator the layer holds (``rng=``: a ``Generator`` or a seed)
    through ``nnflow.random``, so runs with the same seed repeat exactly, and a step compiled by
    ``ad.compile_grad`` draws a new mask on every call instead of replaying the traced one.

    >>> import numpy as np
    >>> drop = Dropout(0.5, rng=0)
    >>> y = drop(np.ones((2, 4), np.float32))
    >>> sorted(set(y.ravel().tolist())), drop.eval()(np.ones(2)).tolist()
    ([0.0, 2.0], [1.0, 1.0])
    """

    def __init__(self, p: float = 0.5, *, rng: Any = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = as_generator(rng)

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = nnrandom.bernoulli(self.rng, 1.0 - self.p, x.shape, dtype=x.dtype, like=x)
        return x * (keep * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"{self.p}"
