"""``DataLoader``: mini-batches over arrays, shuffled by seed, deterministic and resumable.

The order of epoch ``e`` depends only on ``(seed, e)`` — a fresh ``numpy`` generator seeded
with ``SeedSequence([seed, e])`` — so any epoch can be replayed without replaying the ones
before it. The loader counts its position (epoch, and batches handed out *and finished with*:
the count moves when the next batch is asked for), and ``state_dict`` / ``load_state_dict``
carry it, so a run stopped in the middle of an epoch resumes with the very next batch. A
``for`` loop over the loader runs the rest of the current epoch, then moves to the next.

>>> import numpy as np
>>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
>>> loader = DataLoader((x, y), batch_size=2, shuffle=False)
>>> [yb.tolist() for _, yb in loader]
[[0, 1], [2, 3], [4]]
>>> len(loader), loader.epoch
(3, 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..tree import is_array

__all__ = ["DataLoader"]


class DataLoader:
    """Batches of ``arrays`` (an array, a tuple/list/dict of arrays, or any dataset).

    Args:
        arrays: arrays sharing their first axis (batches keep the structure: a tuple gives
            tuples, a dict gives dicts), or a dataset with ``__len__`` and ``__getitem__``
            returning one sample (an array or a tuple/dict of arrays; samples are stacked).
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a new order every epoch, from ``seed`` and the epoch number.
        seed: the shuffling seed.
        drop_last: drop the last, incomplete batch.

    >>> import numpy as np
    >>> loader = DataLoader(np.arange(6), batch_size=4, seed=1)
    >>> sorted(np.concatenate(list(loader)).tolist())
    [0, 1, 2, 3, 4, 5]
    """

    def __init__(
        self,
        arrays: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.arrays, self.batch_size = arrays, int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_samples = _check_lengths(arrays)
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch``, in the order they are served.

        >>> DataLoader(np.zeros(4), 2, shuffle=False).order(7).tolist()
        [0, 1, 2, 3]
        """
        if not self.shuffle:
            return np.arange(self.num_samples)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        return rng.permutation(self.num_samples)

    def __iter__(self) -> Iterator[Any]:
        """The remaining batches of the current epoch (all of them for a fresh epoch)."""
        order, n = self.order(self.epoch), len(self)
        while self.batch < n:
            b = self.batch
            yield self.take(order[b * self.batch_size : (b + 1) * self.batch_size])
            self.batch = b + 1
        self.epoch, self.batch = self.epoch + 1, 0

    def take(self, index: np.ndarray) -> Any:
        """The batch made of the samples at ``index`` (a contiguous run is sliced, no copy)."""
        if len(index) and not self.shuffle:
            index = slice(int(index[0]), int(index[-1]) + 1)
        return _take(self.arrays, index)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        self.epoch, self.batch = int(epoch), 0

    def shard(self, rank: int, world_size: int) -> Any:
        """Rank ``rank``'s share of every batch when ``world_size`` processes train together.

        Each step takes a global batch of ``world_size * batch_size`` samples in this loader's
        order and gives rank ``rank`` its contiguous piece (``nnflow.data.sharded``).

        >>> loader = DataLoader(np.arange(8), batch_size=2, shuffle=False)
        >>> [b.tolist() for b in loader.shard(rank=1, world_size=2)]
        [[2, 3], [6, 7]]
        """
        from .sharded import ShardedLoader

        return ShardedLoader(self, rank, world_size)

    def state_dict(self) -> dict[str, int]:
        """The position (JSON-able): epoch, batches done in it, and the seed.

        >>> DataLoader(np.zeros(4), 2).state_dict()
        {'epoch': 0, 'batch': 0, 'seed': 0}
        """
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at the position ``state_dict()`` returned."""
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ValueError(
                f"DataLoader.load_state_dict: batch {batch} is outside this loader's epoch of "
                f"{len(self)} batches (a different dataset or batch size?)"
            )
        self.epoch, self.batch, self.seed = int(state["epoch"]), batch, int(state["seed"])

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.num_samples} samples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}, batch={self.batch})"
        )


def _check_lengths(arrays: Any) -> int:
    if is_array(arrays):
        if np.ndim(arrays) == 0:
            raise ValueError("DataLoader: cannot batch a 0-d array")
        return len(arrays)
    if isinstance(arrays, (tuple, list, dict)):
        items = arrays.items() if isinstance(arrays, dict) else enumerate(arrays)
        lengths = {key: _check_lengths(value) for key, value in items}
        if not lengths:
            raise ValueError("DataLoader: no arrays given")
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"[{key!r}]: {n}" for key, n in lengths.items())
            raise ValueError(f"DataLoader: arrays differ in length along axis 0 ({sizes})")
        return next(iter(lengths.values()))
    if hasattr(arrays, "__len__") and hasattr(arrays, "__getitem__"):
        return len(arrays)
    raise TypeError(
        f"DataLoader: expected an array, a tuple/list/dict of arrays or a dataset with "
        f"__len__ and __getitem__, got {type(arrays).__name__}"
    )


def _take(arrays: Any, index: Any) -> Any:
    if is_array(arrays):
        return arrays[index]
    if isinstance(arrays, dict):
        return {key: _take(value, index) for key, value in arrays.items()}
    if isinstance(arrays, (tuple, list)):
        return type(arrays)(_take(value, index) for value in arrays)
    indices = range(len(arrays))[index] if isinstance(index, slice) else index
    return _stack([arrays[int(i)] for i in indices])


def _stack(samples: list) -> Any:
    """Collate samples of a dataset: stack arrays, recursing into tuples and dicts."""
    first = samples[0]
    if isinstance(first, dict):
        return {key: _stack([s[key] for s in samples]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([s[i] for s in samples]) for i in range(len(first)))
    return np.stack([np.asarray(s) for s in samples])
