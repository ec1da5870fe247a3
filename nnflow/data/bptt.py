"""``BPTTLoader``: consecutive chunks of one long sequence, for truncated backpropagation
through time (TBPTT) with a recurrent state carried from chunk to chunk.

The sequence is cut into ``batch_size`` streams of equal length laid side by side (row ``b``
of every batch continues row ``b`` of the batch before), and each batch is the next
``seq_len`` steps of every stream::

    tokens  a b c d e f g h i j k l m n o p q r s t u v w x y   (batch_size=2, seq_len=3)
    stream 0: a b c d e f g h i j k l      stream 1: m n o p q r s t u v w x
    batch 0: x = [a b c], [m n o]   y = [b c d], [n o p]   first = True
    batch 1: x = [d e f], [p q r]   y = [e f g], [q r s]   first = False   ...

``y`` is ``x`` shifted by one step (next-token targets), and ``first`` is ``True`` for the
first batch of a pass: where a model resets its carried state (``Recur.reset()``), so the
state flows across the chunks of an epoch and never from one epoch, or from the training text,
into the next pass. ``first`` is a Python ``bool``, so a step compiled by ``ad.compile_grad``
specialises on it (one variant resets, the other carries the state).

With ``shuffle=True`` every epoch starts the streams at a random offset in ``[0, seq_len)``
drawn from ``(seed, epoch)``, so chunk boundaries fall in new places each epoch while the
streams stay consecutive; the order of the chunks themselves cannot be shuffled without
breaking the carried state. Like ``DataLoader``, the loader counts its position and resumes
from ``state_dict()``; a model's carried state is not part of a checkpoint, so a run resumed in
the middle of an epoch continues from a zero state until the next epoch.

>>> loader = BPTTLoader(np.arange(25), batch_size=2, seq_len=3, shuffle=False)
>>> len(loader), [first for _, _, first in loader]
(4, [True, False, False, False])
>>> x, y, first = next(iter(loader))
>>> x.tolist(), y.tolist(), first
([[0, 1, 2], [12, 13, 14]], [[1, 2, 3], [13, 14, 15]], True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["BPTTLoader"]


class BPTTLoader:
    """Batches ``(x, y, first)`` of consecutive ``seq_len``-step chunks of ``batch_size``
    parallel streams of the 1-d ``sequence`` (see the module docstring).

    Args:
        sequence: a 1-d array (token indices, or any values) at least
            ``batch_size * seq_len + seq_len`` long.
        batch_size: the number of streams (rows of a batch).
        seq_len: steps per chunk (the truncation length of backpropagation through time).
        shuffle: start each epoch at a random offset in ``[0, seq_len)`` (from ``seed`` and
            the epoch number); ``False``: offset 0 every epoch.
        seed: the offsets' seed.
        drop_last: leave out the last chunk when it is shorter than ``seq_len`` (every batch
            then has one shape, so a compiled step is traced once).

    >>> loader = BPTTLoader(np.arange(100), batch_size=4, seq_len=8, drop_last=True)
    >>> [x.shape for x, _, _ in loader]
    [(4, 8), (4, 8)]
    """

    def __init__(
        self,
        sequence: Any,
        batch_size: int,
        seq_len: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"BPTTLoader: {name} must be a positive int, got {value!r}")
        if np.ndim(sequence) != 1:
            raise ValueError(f"BPTTLoader: expected a 1-d sequence, got shape {np.shape(sequence)}")
        self.sequence, self.batch_size, self.seq_len = sequence, int(batch_size), int(seq_len)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        # every epoch uses the same stream length, whatever its offset: len() is fixed
        spare = self.seq_len - 1 if self.shuffle else 0
        self.stream_length = (len(sequence) - 1 - spare) // self.batch_size  # inputs per stream
        if self.stream_length < self.seq_len:
            raise ValueError(
                f"BPTTLoader: a sequence of {len(sequence)} is too short for {batch_size} "
                f"streams of at least seq_len={seq_len} steps"
                + (" (plus seq_len - 1 for the random offset)" if self.shuffle else "")
            )
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        """Chunks (batches) per epoch."""
        if self.drop_last:
            return self.stream_length // self.seq_len
        return math.ceil(self.stream_length / self.seq_len)

    @property
    def num_samples(self) -> int:
        """Rows served per epoch (``batch_size`` per batch): what progress bars count."""
        return len(self) * self.batch_size

    def offset(self, epoch: int) -> int:
        """Where the streams of ``epoch`` start in the sequence (0 without ``shuffle``).

        >>> BPTTLoader(np.arange(50), 2, 4, shuffle=False).offset(3)
        0
        """
        if not self.shuffle:
            return 0
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        return int(rng.integers(self.seq_len))

    def streams(self, epoch: int) -> Any:
        """The ``(batch_size, stream_length + 1)`` streams of ``epoch`` (a copy).

        >>> BPTTLoader(np.arange(9), 2, 2, shuffle=False).streams(0).tolist()
        [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
        """
        start, n = self.offset(epoch), self.stream_length
        window = self.sequence[start : start + self.batch_size * n + 1]
        # row b is window[b * n : b * n + n + 1]: rows overlap by one (the last target)
        rows = [window[b * n : b * n + n + 1] for b in range(self.batch_size)]
        return get_array_module(window).stack(rows)

    def __iter__(self) -> Iterator[tuple[Any, Any, bool]]:
        """The remaining batches of the current epoch (all of them for a fresh epoch)."""
        streams, count = self.streams(self.epoch), len(self)
        while self.batch < count:
            k = self.batch
            t0, t1 = k * self.seq_len, min((k + 1) * self.seq_len, self.stream_length)
            yield streams[:, t0:t1], streams[:, t0 + 1 : t1 + 1], k == 0
            self.batch = k + 1
        self.epoch, self.batch = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first chunk at the next iteration."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """The position (JSON-able): epoch, chunks done in it, and the seed.

        >>> BPTTLoader(np.arange(50), 2, 4).state_dict()
        {'epoch': 0, 'batch': 0, 'seed': 0}
        """
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at the position ``state_dict()`` returned."""
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ValueError(
                f"BPTTLoader.load_state_dict: chunk {batch} is outside this loader's epoch of "
                f"{len(self)} chunks (a different sequence, batch size or seq_len?)"
            )
        self.epoch, self.batch, self.seed = int(state["epoch"]), batch, int(state["seed"])

    def __repr__(self) -> str:
        return (
            f"BPTTLoader({len(self.sequence)} steps, batch_size={self.batch_size}, "
            f"seq_len={self.seq_len}, {len(self)} chunks, shuffle={self.shuffle}, "
            f"epoch={self.epoch}, batch={self.batch})"
        )
