"""``Chain`` (layers applied in order) and ``Flatten``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .model import Model, ShapeError, describe

__all__ = ["Chain", "Flatten"]


class Chain(Model):
    """Apply ``layers`` in order: ``Chain(a, b, c)(x) == c(b(a(x)))``.

    Layers are models or plain functions (``nnflow.functional.relu``). Parameter paths hold
    the layer's index: ``("layers", 0, "weight")``.

    >>> from nnflow.layers import Linear
    >>> from nnflow.functional import relu
    >>> model = Chain(Linear(4, 8, rng=0), relu, Linear(8, 2, rng=1))
    >>> [p for p, _ in model.parameters()][:2]
    [('layers', 0, 'weight'), ('layers', 0, 'bias')]
    >>> model(np.ones((3, 4), np.float32)).shape
    (3, 2)
    """

    def __init__(self, *layers: Callable):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Chain: layer {i} is not callable: {layer!r}")
        self.layers = list(layers)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Chain(*self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _repr_lines(self, top: bool = False) -> list[str]:
        lines = ["Chain("]
        for layer in self.layers:
            inner = layer._repr_lines() if isinstance(layer, Model) else [_name(layer)]
            inner[0] = inner[0].replace("  #", ",  #", 1) if "  #" in inner[0] else inner[0] + ","
            if len(inner) > 1:
                inner[-1] = inner[-1].replace("  #", ",  #", 1) if "  #" in inner[-1] else (
                    inner[-1] + ",")  # fmt: skip
            lines.extend("  " + line for line in inner)
        count = self.num_parameters()
        lines.append(")" + (self._total() if top else f"  # {count:,} parameters"))
        return lines


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


class Flatten(Model):
    """Merge axes ``start_dim`` to ``end_dim`` into one: ``(N, C, H, W) -> (N, C*H*W)``.

    >>> Flatten()(np.zeros((2, 3, 4, 5))).shape
    (2, 60)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Any) -> Any:
        shape = tuple(np.shape(x))
        start, end = self.start_dim % max(len(shape), 1), self.end_dim % max(len(shape), 1)
        if len(shape) <= max(self.start_dim, 0) or start > end:
            raise ShapeError(self, f"cannot flatten axes {self.start_dim}..{self.end_dim} of "
                             f"{describe(x)}")  # fmt: skip
        merged = math.prod(shape[start : end + 1])
        return np.reshape(x, shape[:start] + (merged,) + shape[end + 1 :])

    def extra_repr(self) -> str:
        if (self.start_dim, self.end_dim) == (1, -1):
            return ""
        return f"{self.start_dim}, {self.end_dim}"
