"""Sample inputs for the derivative rules (one record per use of a rule, OpInfo style).

Every rule file lists ``CASES`` next to its table; ``tests/ad/test_rules.py`` gradchecks each
one (first and second order) and fails when a registered rule has no case.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    """One sample: ``call(*args)`` uses ``fn``; every array in ``args`` is differentiated.

    Args:
        fn: the registered function this case exercises.
        call: a function of float64 arrays that calls ``fn`` (extra constant arguments such as
            ``axis`` are closed over).
        args: the float64 inputs, differentiated all at once.
        name: shown in the test id.
        second_order: whether the second-order check applies; off only when the sample sits
            exactly on a kink on purpose (ties of ``maximum``), where finite differences of the
            gradient are meaningless.
        eps, atol, rtol: finite-difference settings for ill-conditioned functions.

    >>> c = Case(np.exp, np.exp, (sample(3),), "vector")
    >>> c.label
    'numpy.exp-vector'
    """

    fn: Callable
    call: Callable
    args: tuple
    name: str = ""
    second_order: bool = True
    eps: float = 1e-6
    atol: float = 1e-6
    rtol: float = 1e-5
    extra: Any = None

    @property
    def label(self) -> str:
        from ..registry import qualname

        return f"{qualname(self.fn)}-{self.name}" if self.name else qualname(self.fn)


def sample(*shape: int, low: float = -1.0, high: float = 1.0, seed: int | None = None):
    """A reproducible float64 array of ``shape`` drawn uniformly from ``[low, high)``.

    The seed defaults to one derived from the shape and bounds, so the same call always gives
    the same numbers without any global random state.

    >>> sample(2, 3).shape
    (2, 3)
    """
    if seed is None:
        seed = zlib.crc32(repr((shape, low, high)).encode())
    return np.random.default_rng(seed).uniform(low, high, shape)


def positive(*shape: int, seed: int | None = None):
    """Samples in ``[0.5, 2)`` for functions defined on positive numbers only.

    >>> bool((positive(4) > 0).all())
    True
    """
    return sample(*shape, low=0.5, high=2.0, seed=seed)


def well_conditioned(n: int, batch: tuple[int, ...] = (), seed: int = 0):
    """A random ``n x n`` matrix (or batch of them) safely away from singular.

    >>> well_conditioned(3).shape
    (3, 3)
    """
    a = np.random.default_rng(seed).uniform(-1, 1, batch + (n, n))
    return a + 3 * np.eye(n)
