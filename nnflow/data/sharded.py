"""``ShardedLoader``: one process's share of a ``DataLoader``'s batches, for data parallelism.

``world_size`` processes each wrap the same loader with their own ``rank``. Every step, all of
them take the *same global batch* of ``world_size * loader.batch_size`` samples, in the order a
single process would see them (``loader.order(epoch)``, a function of the seed and the epoch
only), and rank ``r`` keeps the ``r``-th of ``world_size`` contiguous pieces of it. The pieces
are disjoint and together make the global batch, so averaging the ranks' gradients (weighted by
their piece sizes) gives the gradient one process computes on the global batch. The last,
incomplete global batch of an epoch is split as evenly as it goes (sizes differ by at most one);
when it holds fewer samples than there are ranks, some ranks get an empty piece, which they
still yield (``keep_empty``, so every rank takes part in every step) unless told not to.

``batch_size`` and ``len()`` are those of the *global* batches (what a step consumes over all
ranks); ``local_batch_size`` is one rank's share of a full batch. The position (``epoch`` and
global ``batch``) is saved and restored like a ``DataLoader``'s.

>>> import numpy as np
>>> from nnflow.data import DataLoader
>>> loader = DataLoader(np.arange(10), batch_size=2, shuffle=False)
>>> [b.tolist() for b in ShardedLoader(loader, rank=0, world_size=2)]
[[0, 1], [4, 5], [8]]
>>> [b.tolist() for b in ShardedLoader(loader, rank=1, world_size=2)]
[[2, 3], [6, 7], [9]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..tree import is_array

__all__ = ["ShardedLoader"]


class ShardedLoader:
    """Rank ``rank``'s pieces of the global batches of ``loader`` (module docstring).

    Args:
        loader: a ``DataLoader``, or any object with ``order(epoch)``, ``take(index)``,
            ``batch_size`` and ``num_samples`` (and optionally ``drop_last`` and ``seed``).
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: the number of processes sharing the data.
        keep_empty: yield an empty batch (arrays with 0 samples) when this rank's piece of the
            last global batch is empty, so that the rank still takes part in the step.
    """

    def __init__(self, loader: Any, rank: int, world_size: int, keep_empty: bool = True):
        for name in ("order", "take", "batch_size", "num_samples"):
            if not hasattr(loader, name):
                raise TypeError(
                    f"ShardedLoader: {type(loader).__name__} has no {name!r}; shard an "
                    f"nnflow.data.DataLoader (or an object with order(epoch), take(index), "
                    f"batch_size and num_samples)"
                )
        world_size, rank = int(world_size), int(rank)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"ShardedLoader: need 0 <= rank < world_size, got rank={rank}, "
                f"world_size={world_size}"
            )
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.keep_empty = bool(keep_empty)
        self.local_batch_size = int(loader.batch_size)
        self.batch_size = self.local_batch_size * world_size
        self.num_samples = int(loader.num_samples)
        self.drop_last = bool(getattr(loader, "drop_last", False))
        self.epoch, self.batch = int(getattr(loader, "epoch", 0)), 0

    @property
    def seed(self) -> int | None:
        """The wrapped loader's shuffling seed."""
        return getattr(self.loader, "seed", None)

    def __len__(self) -> int:
        """Global batches (steps) per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of ``epoch`` (the wrapped loader's)."""
        return self.loader.order(epoch)

    def piece(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous piece of the global batch ``index``.

        >>> from nnflow.data import DataLoader
        >>> s = ShardedLoader(DataLoader(np.zeros(9), 4), rank=2, world_size=3)
        >>> s.piece(np.arange(5)).tolist()
        [3, 4]
        """
        n, r, w = len(index), self.rank, self.world_size
        return index[n * r // w : n * (r + 1) // w]

    def __iter__(self) -> Iterator[Any]:
        """This rank's pieces of the remaining global batches of the current epoch."""
        order, n, size = self.order(self.epoch), len(self), self.batch_size
        while self.batch < n:
            b = self.batch
            piece = self.piece(order[b * size : (b + 1) * size])
            if len(piece):
                yield self.loader.take(piece)
            elif self.keep_empty:
                yield _empty(self.loader.take(order[:1]))
            self.batch = b + 1
        self.epoch, self.batch = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """The position: epoch, global batches done in it, and the seed."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the position ``state_dict()`` returned."""
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ValueError(
                f"ShardedLoader.load_state_dict: batch {batch} is outside this loader's epoch "
                f"of {len(self)} global batches (a different dataset, batch size or number "
                f"of processes?)"
            )
        self.epoch, self.batch = int(state["epoch"]), batch
        if state.get("seed") is not None and hasattr(self.loader, "seed"):
            self.loader.seed = int(state["seed"])

    def shard(self, rank: int, world_size: int) -> ShardedLoader:
        """``self`` when it already is rank ``rank`` of ``world_size``; an error otherwise."""
        if (int(rank), int(world_size)) != (self.rank, self.world_size):
            raise ValueError(
                f"this loader is already sharded as rank {self.rank} of {self.world_size}; "
                f"cannot make it rank {rank} of {world_size} (shard the original loader)"
            )
        return self

    def __repr__(self) -> str:
        return (
            f"ShardedLoader(rank {self.rank} of {self.world_size}, batch_size={self.batch_size} "
            f"({self.local_batch_size} per rank), epoch={self.epoch}, batch={self.batch}, "
            f"{self.loader!r})"
        )


def _empty(batch: Any) -> Any:
    """``batch`` (a structure of arrays) cut to 0 samples, keeping shapes and dtypes."""
    if is_array(batch):
        return batch[:0]
    if isinstance(batch, dict):
        return {key: _empty(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_empty(value) for value in batch)
    return batch
