"""``Embedding``: a lookup table of vectors indexed by integers."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import init as initializers
from .model import LayerError, Model, describe

__all__ = ["Embedding"]


class Embedding(Model):
    """``y = weight[indices]``: integer ``indices`` of any shape give ``(*shape, dim)``.

    ``weight`` is ``(num_embeddings, embedding_dim)`` drawn from ``N(0, 1)`` (PyTorch's
    default). The row ``padding_idx`` starts at zero and gets no gradient. Repeated indices
    accumulate their gradients.

    >>> emb = Embedding(10, 3, rng=0)
    >>> emb
    Embedding(10 => 3)  # 30 parameters
    >>> emb(np.array([[1, 2], [3, 3]])).shape
    (2, 2, 3)
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        rng: Any = None,
        dtype: Any = np.float32,
    ):
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(
                f"Embedding: num_embeddings and embedding_dim must be positive, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"Embedding: padding_idx {padding_idx} is outside [0, {num_embeddings})"
                )
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.weight = initializers.normal((num_embeddings, embedding_dim), rng=rng, dtype=dtype)
        if padding_idx is not None:
            self.weight[padding_idx] = 0

    def forward(self, indices: Any) -> Any:
        dtype = getattr(indices, "dtype", None)
        kind = np.dtype(dtype if dtype is not None else np.asarray(indices).dtype).kind
        if kind not in "iu":
            raise LayerError(self, f"expected integer indices, got {describe(indices)}")
        try:
            y = self.weight[indices]
        except IndexError as error:
            raise LayerError(
                self, f"got an index outside [0, {self.weight.shape[0]}): {error}"
            ) from None
        if self.padding_idx is not None:
            y = y * np.expand_dims(indices != self.padding_idx, -1)
        return y

    def extra_repr(self) -> str:
        n, d = self.weight.shape
        return f"{n} => {d}" + (f", padding_idx={self.padding_idx}" if self.padding_idx else "")
