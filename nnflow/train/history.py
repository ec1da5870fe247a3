"""``History``, what ``Trainer.fit`` returns, and how many samples a batch holds."""

from __future__ import annotations

from typing import Any

from ..tree import is_array, leaves

__all__ = ["History", "batch_size"]


class History(list):
    """Per-epoch metric dicts; ``history["val_loss"]`` gives one metric's column.

    >>> h = History([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    >>> h["loss"], h[-1]["epoch"]
    ([0.5, 0.25], 2)
    """

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row.get(key) for row in self]
        return super().__getitem__(key)


def batch_size(batch: Any) -> int:
    """The number of samples in ``batch`` (the length of its first array).

    >>> import numpy as np
    >>> batch_size((np.zeros((5, 2)), np.zeros(5)))
    5
    """
    if is_array(batch):
        return len(batch)
    found = leaves(batch)
    return len(found[0][1]) if found and getattr(found[0][1], "ndim", 0) else 1
